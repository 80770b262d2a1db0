"""Loading scenarios: formats, presets, overrides, defaults, and one clear error per mistake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from moesim import ScenarioError, load_scenario, scenario_from_dict
from moesim.scenario import parse_override, scenario_json_schema


def test_defaults_are_filled(base_document: dict[str, Any]) -> None:
    scenario = scenario_from_dict(base_document)
    assert scenario.routing.top_k == 2  # from the model
    assert scenario.routing.score_function == "softmax"
    assert scenario.parallelism.dp_size == 8  # world size / (tp x pp x cp)
    assert scenario.workload.global_batch_size == 8  # micro_batch_size x dp_size
    assert scenario.cluster.nic_gbps == 400  # from the H100 preset
    assert scenario.cluster.nics_per_node == 8


def test_model_preset_with_overrides_and_full_spec(base_document: dict[str, Any]) -> None:
    document = {**base_document, "model": {"preset": "mixtral-8x7b", "top_k": 1, "num_layers": 4}}
    scenario = scenario_from_dict(document)
    assert (scenario.model.top_k, scenario.model.num_layers, scenario.model.hidden_size) == (1, 4, 4096)
    full = scenario.model.model_dump()
    again = scenario_from_dict({**base_document, "model": full})
    assert again.model == scenario.model


def test_gpu_as_preset_override_or_full_spec(base_document: dict[str, Any]) -> None:
    document = copy.deepcopy(base_document)
    document["cluster"]["gpu"] = {"preset": "h200", "hbm_gb": 100}
    scenario = scenario_from_dict(document)
    assert scenario.cluster.gpu.name == "H200" and scenario.cluster.gpu.hbm_gb == 100
    document["cluster"]["gpu"] = scenario.cluster.gpu.model_dump() | {"name": "my-gpu"}
    assert scenario_from_dict(document).cluster.gpu.name == "my-gpu"


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_three_formats(suffix: str, tmp_path: Path) -> None:
    texts = {
        ".yaml": "model: mixtral-8x7b\nparallelism:\n  ep_size: 8\n",
        ".json": '{"model": "mixtral-8x7b", "parallelism": {"ep_size": 8}}',
        ".toml": 'model = "mixtral-8x7b"\n[parallelism]\nep_size = 8\n',
    }
    path = tmp_path / f"s{suffix}"
    path.write_text(texts[suffix])
    assert load_scenario(path).parallelism.ep_size == 8


def test_overrides(write_scenario: Any, base_document: dict[str, Any]) -> None:
    path = write_scenario(base_document)
    scenario = load_scenario(
        path,
        overrides=["routing.top_k=1", "routing.capacity_factor=null", "model.num_layers=8", "cluster.gpu.hbm_gb=96"],
    )
    assert scenario.routing.top_k == 1
    assert scenario.routing.capacity_factor is None  # dropless
    assert scenario.model.num_layers == 8 and scenario.model.name == "mixtral-8x7b"
    assert scenario.cluster.gpu.hbm_gb == 96 and scenario.cluster.gpu.name == "H100-SXM"
    assert parse_override("sweep.params={routing.top_k: [1, 2]}") == (["sweep", "params"], {"routing.top_k": [1, 2]})


def expect_error(document: Any, *fragments: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ScenarioError) as caught:
        scenario_from_dict(document, overrides)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_key_names_the_nearest(base_document: dict[str, Any]) -> None:
    document = copy.deepcopy(base_document)
    document["routing"]["capacity_facter"] = 1.0
    expect_error(document, "capacity_facter", "did you mean 'capacity_factor'")
    document = {**base_document, "paralelism": {}}
    expect_error(document, "'paralelism'", "did you mean 'parallelism'")
    expect_error(base_document, "did you mean 'top_k'", overrides=("routing.topk=2",))


def test_wrong_type(base_document: dict[str, Any]) -> None:
    document = copy.deepcopy(base_document)
    document["parallelism"]["ep_size"] = "eight"
    expect_error(document, "parallelism.ep_size", "integer", "'eight'")


@pytest.mark.parametrize(
    "path, value",
    [
        ("cluster.num_nodes", 0),
        ("cluster.gpus_per_node", -8),
        ("workload.seq_len", 0),
        ("workload.micro_batch_size", -1),
        ("routing.capacity_factor", -1.0),
        ("parallelism.tp_size", 0),
        ("cluster.nic_gbps", 0),
    ],
)
def test_zero_or_negative_sizes(base_document: dict[str, Any], path: str, value: float) -> None:
    expect_error(base_document, path, "greater than", overrides=(f"{path}={value}",))


def test_top_k_larger_than_num_experts(base_document: dict[str, Any]) -> None:
    expect_error(base_document, "routing.top_k", "larger than num_experts (8)", overrides=("routing.top_k=9",))
    expect_error({**base_document, "model": {"preset": "mixtral-8x7b", "top_k": 9}}, "model", "top_k (9)")


def test_experts_not_divisible_by_ep(base_document: dict[str, Any]) -> None:
    document = copy.deepcopy(base_document)
    document["cluster"]["gpus_per_node"] = 6
    document["parallelism"]["ep_size"] = 3
    expect_error(document, "parallelism.ep_size", "not divisible by ep_size (3)")


def test_world_size_mismatch(base_document: dict[str, Any]) -> None:
    document = copy.deepcopy(base_document)
    document["parallelism"].update(dp_size=2, tp_size=2)
    expect_error(document, "parallelism", "= 4", "8 GPUs")
    document["parallelism"] = {"tp_size": 3}
    expect_error(document, "not a multiple of tp_size")


def test_unknown_presets_list_the_known(base_document: dict[str, Any]) -> None:
    expect_error(
        {**base_document, "model": "mixtral-8x8b"}, "unknown model preset", "did you mean 'mixtral-8x7b'", "deepseek-v3"
    )
    expect_error(base_document, "unknown GPU preset 'H1000'", "H100-SXM", overrides=("cluster.gpu=H1000",))


def test_unreadable_empty_and_malformed_files(tmp_path: Path, write_scenario: Any) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path)  # a directory
    with pytest.raises(ScenarioError, match="empty"):
        load_scenario(write_scenario("   \n"))
    with pytest.raises(ScenarioError, match="no scenario"):
        load_scenario(write_scenario("# only a comment\n"))
    with pytest.raises(ScenarioError, match="not valid YAML.*line 2"):
        load_scenario(write_scenario("model: [unclosed\n"))
    with pytest.raises(ScenarioError, match="not valid JSON.*line 1"):
        load_scenario(write_scenario("{nope", ".json"))
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write_scenario("model = = 1", ".toml"))
    with pytest.raises(ScenarioError, match="must be a mapping"):
        load_scenario(write_scenario("- a\n- b\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(ScenarioError):
        load_scenario(binary)


def test_bad_override_syntax(base_document: dict[str, Any]) -> None:
    expect_error(base_document, "expected KEY=VALUE", overrides=("routing.top_k",))
    expect_error(base_document, "expected KEY=VALUE", overrides=("=3",))
    expect_error(base_document, "is a value, not a section", overrides=("seed.x=1",))


def test_group_limited_routing_checks(base_document: dict[str, Any]) -> None:
    document = {
        "model": "deepseek-v3",
        "cluster": {"num_nodes": 8, "gpus_per_node": 8, "gpu": "H800"},
        "parallelism": {"ep_size": 64},
    }
    scenario = scenario_from_dict(document)
    assert (scenario.routing.num_expert_groups, scenario.routing.topk_groups) == (8, 4)
    assert scenario.routing.score_function == "sigmoid"
    expect_error(document, "routing.topk_groups", "more than", overrides=("routing.topk_groups=9",))
    expect_error(document, "cannot hold top_k", overrides=("routing.topk_groups=1", "routing.top_k=33"))


def test_sweep_paths_are_checked(base_document: dict[str, Any]) -> None:
    ok = {**base_document, "sweep": {"params": {"routing.capacity_factor": [1.0, 2.0], "routing.options.noise": [0.1]}}}
    assert scenario_from_dict(ok).sweep.params["routing.capacity_factor"] == [1.0, 2.0]
    bad = {**base_document, "sweep": {"params": {"routing.capacity": [1.0]}}}
    expect_error(bad, "sweep.params", "did you mean 'capacity_factor'")
    expect_error({**base_document, "sweep": {"params": {"seed": []}}}, "has no values")


def test_same_document_same_scenario(base_document: dict[str, Any]) -> None:
    assert scenario_from_dict(base_document) == scenario_from_dict(copy.deepcopy(base_document))


def test_json_schema_accepts_every_shipped_scenario() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = scenario_json_schema()
    assert "model" in schema["required"]
    assert "mixtral-8x7b" in schema["properties"]["model"]["anyOf"][0]["enum"]
    validator = jsonschema.Draft202012Validator(schema)
    from moesim.scenario import read_document

    for path in sorted(Path(__file__).resolve().parent.parent.joinpath("scenarios").glob("*.*")):
        errors = list(validator.iter_errors(read_document(path)))
        assert not errors, f"{path.name}: {errors[0].message}"
    assert list(validator.iter_errors({"model": "mixtral-8x7b", "routing": {"topk": 2}}))


def test_every_shipped_scenario_loads() -> None:
    scenario_dir = Path(__file__).resolve().parent.parent / "scenarios"
    files = sorted(scenario_dir.glob("*.*"))
    assert files
    for path in files:
        load_scenario(path)
