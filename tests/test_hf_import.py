"""The Hugging Face config.json import: every family's published counts, the presets it must equal, the keys it
refuses by name, local attention's closed forms, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.models import accounting, model_preset
from moesim.models.hf_import import ModelImportError, spec_from_hf_config, spec_from_hf_file
from moesim.models.presets import PUBLISHED
from moesim.scenario import load_scenario, scenario_from_dict

CONFIGS = Path(__file__).resolve().parent.parent / "models" / "hf"

# Published counts of the families without a preset: (total, its digits, active, its digits, whether the active
# count includes the input embedding, source). A count passes within half a unit of its last printed digit.
PUBLISHED_IMPORTS = {
    "gpt-oss-120b": (116.83e9, 5, 5.13e9, 3, False, "OpenAI, gpt-oss-120b & gpt-oss-20b model card (2025), Table 1"),
    "qwen2-57b-a14b": (57e9, 2, 14e9, 2, True, "Qwen2 technical report (arXiv 2407.10671), Table 1: 57B-A14B"),
    "qwen3-235b-a22b": (235e9, 3, 22e9, 2, True, "Qwen3 technical report (arXiv 2505.09388), Table 2"),
    "minimax-m2.5": (230e9, 2, 10e9, 2, False, "MiniMax-M2 model card: 230B total, 10B active (M2.5: same config)"),
    "kimi-k2.5": (1e12, 1, 32e9, 2, False, "Kimi-K2 model card: 1T total, 32B activated (K2.5: the same text model)"),
}
# Families with a preset: the import must give the preset's model (same counts, FLOPs and caches).
PRESET_OF = {
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "qwen3-30b-a3b": "qwen3-30b-a3b",
    "qwen3-235b-a22b": "qwen3-235b-a22b",
    "deepseek-v2": "deepseek-v2",
    "deepseek-v3": "deepseek-v3",
    "olmoe-1b-7b-0924": "olmoe-1b-7b",
    "dbrx-base": "dbrx",
}


def within_last_digit(value: float, published: float, digits: int) -> bool:
    """Whether `value` prints as `published` at `digits` significant digits (half a unit of the last one)."""
    unit = 10 ** (math.floor(math.log10(published)) - digits + 1)
    return abs(value - published) <= 0.5 * unit


def test_every_committed_config_is_a_family_it_maps() -> None:
    files = sorted(CONFIGS.glob("*.json"))
    assert len(files) == 13
    families = {json.loads(path.read_text())["model_type"] for path in files}
    assert families == {
        "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe", "dbrx", "gpt_oss", "llama4",
        "minimax_m2", "kimi_k25",
    }  # fmt: skip
    assert all(path.stem in (CONFIGS / "SOURCES.md").read_text() for path in files)


@pytest.mark.parametrize("name", sorted(PUBLISHED_IMPORTS))
def test_counts_equal_the_published_ones(name: str) -> None:
    total, total_digits, active, active_digits, with_embedding, source = PUBLISHED_IMPORTS[name]
    spec = spec_from_hf_file(CONFIGS / f"{name}.json")
    counted_total = accounting.total_params(spec)
    counted_active = accounting.active_params(spec, count_input_embedding=with_embedding)
    assert within_last_digit(counted_total, total, total_digits), f"{counted_total / 1e9:.3f}B vs {source}"
    assert within_last_digit(counted_active, active, active_digits), f"{counted_active / 1e9:.3f}B vs {source}"


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_import_equals_the_preset(name: str) -> None:
    imported = spec_from_hf_file(CONFIGS / f"{name}.json")
    preset = model_preset(PRESET_OF[name])
    for figure in (accounting.total_params, accounting.active_params, accounting.kv_cache_bytes_per_token):
        assert figure(imported) == figure(preset)
    assert accounting.training_flops_per_token(imported, 4096) == accounting.training_flops_per_token(preset, 4096)
    for field in ("top_k", "router_strategy", "router_score_function", "router_normalize_weights", "router_bias",
                  "num_expert_groups", "topk_groups", "router_group_score", "routed_scaling_factor", "num_mtp_modules",
                  "qk_norm", "first_k_dense_layers", "moe_layer_frequency"):  # fmt: skip
        assert getattr(imported, field) == getattr(preset, field), field
    published = PUBLISHED[PRESET_OF[name]]
    assert within_last_digit(accounting.total_params(imported), published.total_params, published.significant_digits)


def vision_encoder_params(path: Path, text_hidden: int) -> int:
    """Parameters of Llama 4's vision encoder from the config's vision_config (transformers' Llama 4 vision model:
    class and position embeddings, patch projection, two layer norms, layers of biased attention and a biased
    two-layer MLP with two layer norms, the pixel-shuffle adapter, and the projector into the text model)."""
    vision = json.loads(path.read_text())["vision_config"]
    width, inner, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    positions = (vision["image_size"] // patch) ** 2 + 1
    layer = 4 * (width * width + width) + (width * inner + inner) + (inner * width + width) + 4 * width
    shuffled = int(width / vision["pixel_shuffle_ratio"] ** 2)
    adapter = shuffled * vision["projector_input_dim"] + vision["projector_input_dim"] * vision["projector_output_dim"]
    return (
        width + positions * width + 3 * patch * patch * width + 4 * width
        + vision["num_hidden_layers"] * layer + adapter + vision["vision_output_dim"] * text_hidden
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "total", "digits"), [("llama-4-scout-17b-16e", 109e9, 3), ("llama-4-maverick-17b-128e", 400e9, 2)]
)
def test_llama_4_counts_its_text_model_and_says_the_vision_encoder_is_left_out(
    name: str, total: float, digits: int
) -> None:
    """Meta's totals (Llama 4 model card: Scout 109B, Maverick 400B, each 17B active; "400B" read to two digits,
    as "17B") count the vision encoder, which moesim leaves out and says so; the encoder's modules, counted from the
    same config's vision_config, close the gap."""
    path = CONFIGS / f"{name}.json"
    spec = spec_from_hf_file(path)
    encoder = vision_encoder_params(path, spec.hidden_size)
    assert encoder == 871_932_416  # the same encoder in both
    assert within_last_digit(accounting.total_params(spec) + encoder, total, digits)
    assert within_last_digit(accounting.active_params(spec), 17e9, 2)
    assert any("vision encoder" in note for note in spec.import_notes)
    assert spec.attention_window_kind == "chunked"


def test_interleaved_layers_and_windows_follow_the_config() -> None:
    maverick = spec_from_hf_file(CONFIGS / "llama-4-maverick-17b-128e.json")
    assert [maverick.is_moe_layer(index) for index in range(4)] == [False, True, False, True]
    assert [maverick.is_windowed_layer(index) for index in range(4)] == [True, True, True, False]
    assert maverick.intermediate_size == 16384 and maverick.moe_intermediate_size == 8192
    gpt_oss = spec_from_hf_file(CONFIGS / "gpt-oss-120b.json")
    layer_types = json.loads((CONFIGS / "gpt-oss-120b.json").read_text())["layer_types"]
    assert [gpt_oss.is_windowed_layer(i) for i in range(36)] == [kind == "sliding_attention" for kind in layer_types]


def test_notes_say_what_was_approximated_and_by_how_much() -> None:
    qwen2 = spec_from_hf_file(CONFIGS / "qwen2-57b-a14b.json")
    assert any("+100,352 in all" in note for note in qwen2.import_notes)  # 3,584 x 28 layers of o_proj bias
    assert any("-100,352 parameters" in note for note in qwen2.import_notes)  # the shared expert's gate
    gpt_oss = spec_from_hf_file(CONFIGS / "gpt-oss-120b.json")
    assert any("-4,608 parameters" in note for note in gpt_oss.import_notes)  # 128 experts x 36 layers
    assert spec_from_hf_file(CONFIGS / "mixtral-8x7b-v0.1.json").import_notes == []


def _base() -> dict:
    return json.loads((CONFIGS / "qwen3-30b-a3b.json").read_text())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"num_experts": None}, "lacks 'num_experts'"),
        ({"num_experts": -4}, "'num_experts' is -4"),
        ({"hidden_act": "gelu"}, "'hidden_act'"),
        ({"mlp_only_layers": [3, 7]}, "'mlp_only_layers'"),
        ({"num_experts_per_tok": 300}, "top_k (300) is larger than num_experts"),
    ],
)
def test_what_cannot_be_mapped_is_named(change: dict, named: str) -> None:
    config = {**_base(), **change}
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ModelImportError, match=named.replace("(", r"\(").replace(")", r"\)")):
        spec_from_hf_config(config)


def test_patterns_moesim_cannot_place_are_refused() -> None:
    gpt_oss = json.loads((CONFIGS / "gpt-oss-120b.json").read_text())
    gpt_oss["layer_types"] = ["full_attention"] * 36
    with pytest.raises(ModelImportError, match="layer_types"):
        spec_from_hf_config(gpt_oss)
    deepseek = json.loads((CONFIGS / "deepseek-v3.json").read_text())
    with pytest.raises(ModelImportError, match="moe_layer_freq"):
        spec_from_hf_config({**deepseek, "moe_layer_freq": 2})


def test_leading_dense_layers_map_to_first_k_dense() -> None:
    spec = spec_from_hf_config({**_base(), "mlp_only_layers": [0, 1]})
    assert spec.first_k_dense_layers == 2 and spec.num_dense_layers == 2


# ---------------------------------------------------------------- local attention, closed forms
def test_sliding_window_scores_follow_the_closed_form() -> None:
    spec = spec_from_hf_file(CONFIGS / "gpt-oss-120b.json")
    s, w = 4096, 128
    per_key = accounting.score_flops_per_key(spec)
    assert per_key == 2 * 64 * (64 + 64)
    windowed = w - w * w / (2 * s)  # a causal prompt's mean keys through a sliding window of w
    assert accounting.attention_score_flops_per_token(spec, s) == pytest.approx(per_key * 18 * (s / 2 + windowed))
    assert accounting.windowed_keys(spec, 100, decode=False) == 50  # shorter than the window: plain causal
    assert accounting.windowed_keys(spec, 32768, decode=True) == 128


def test_chunked_attention_keys_follow_the_closed_form() -> None:
    spec = spec_from_hf_file(CONFIGS / "llama-4-maverick-17b-128e.json")
    c = 8192
    assert accounting.windowed_keys(spec, 2 * c + 100, decode=False) == pytest.approx(
        (2 * c * c + 100 * 100) / (2 * (2 * c + 100))
    )
    assert accounting.windowed_keys(spec, 3 * c, decode=True) == c / 2
    assert accounting.windowed_keys(spec, c, decode=False) == c / 2


def test_decode_reads_only_the_windowed_layers_window() -> None:
    """At 32K tokens of context GPT-OSS's decode reads (18 x 32,768 + 18 x 128) cached tokens a step over its 36
    layers, not 36 x 32,768: the decode step costs less than the same model with every layer attending to all."""
    document = {
        "model": str(CONFIGS / "gpt-oss-120b.json"),
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "inference", "seq_len": 32768, "micro_batch_size": 4, "decode_tokens": 8},
    }
    from moesim.sim.step import simulate

    windowed = simulate(scenario_from_dict(document))
    whole = simulate(scenario_from_dict(document, ["model.attention_window=null", "model.full_attention_every=null"]))
    assert windowed.decode_step_s < whole.decode_step_s


# ---------------------------------------------------------------- scenarios and the command line
def test_a_scenario_reads_a_config_beside_it(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "model.json").write_text((CONFIGS / "qwen3-30b-a3b.json").read_text())
    (tmp_path / "s.yaml").write_text("model: {hf_config: configs/model.json, top_k: 4}\n")
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.model.top_k == 4 and scenario.model.num_experts == 128
    assert scenario.model.name == "model"


def test_run_takes_a_config_and_warns_of_its_approximations() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["run", "scenarios/mixtral-8x7b-serving.yaml", "--set", f"model={CONFIGS / 'qwen2-57b-a14b.json'}", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert "warning: model qwen2-57b-a14b: o_proj counted with a bias" in result.stderr
    assert json.loads(result.stdout)["step_time_s"] > 0


def test_presets_show_takes_a_config_file() -> None:
    result = CliRunner().invoke(app, ["presets", "show", "--model", str(CONFIGS / "gpt-oss-120b.json"), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["total_params"] == accounting.total_params(spec_from_hf_file(CONFIGS / "gpt-oss-120b.json"))


@pytest.mark.parametrize(
    ("content", "said"),
    [(None, "cannot read"), ("{not json", "not valid JSON"), ("[1, 2]", "not a config.json mapping")],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, content: str | None, said: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["run", "scenarios/mixtral-8x7b-serving.yaml", "--set", f"model={path}"])
    assert result.exit_code == 2
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda path: path.stem)
def test_every_family_runs_through_the_simulator(path: Path) -> None:
    """Each committed config simulates (four of its layers, one 8-GPU node, EP 8: every family's expert count
    divides by 8), training and serving's static batch."""
    from moesim.sim.step import simulate

    model = {"hf_config": str(path), "num_layers": 4}
    base = {"model": model, "parallelism": {"ep_size": 8}, "simulation": {"network_mode": "fast"}}
    inference = {**base, "workload": {"mode": "inference", "micro_batch_size": 4, "seq_len": 1024, "decode_tokens": 4}}
    training = {**base, "workload": {"seq_len": 1024, "global_batch_size": 16}}
    for document in (inference, training):
        result = simulate(scenario_from_dict(document), check_memory=False)
        assert result.step_time_s > 0 and 0 < result.mfu < 1
