"""Random documents and files: the loader returns a Scenario or raises ScenarioError, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim import Scenario, ScenarioError, scenario_from_dict
from moesim.scenario import ClusterSpec, ParallelismSpec, RoutingSpec, WorkloadSpec, load_scenario

# Keys a real user would write, so the fuzzer often gets past the unknown-key check.
KNOWN_KEYS = sorted(
    set(Scenario.model_fields)
    | set(ClusterSpec.model_fields)
    | set(ParallelismSpec.model_fields)
    | set(WorkloadSpec.model_fields)
    | set(RoutingSpec.model_fields)
    | {"preset", "num_experts", "top_k", "hidden_size", "num_layers", "params"}
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mixtral-8x7b", "deepseek-v3", "tiny-moe", "H100-SXM", "top_k", "base", "fp8", "training"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(-3, 3))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=25,
)


def _plausible() -> st.SearchStrategy[dict[str, Any]]:
    """Documents close to valid ones, so the cross-field checks get exercised too."""
    return st.fixed_dictionaries(
        {"model": st.sampled_from(["mixtral-8x7b", "deepseek-v3", "tiny-moe", "dbrx", "nope"])},
        optional={
            "cluster": st.fixed_dictionaries(
                {},
                optional={
                    "num_nodes": st.integers(-1, 9),
                    "gpus_per_node": st.integers(-1, 9),
                    "gpu": st.sampled_from(["H100-SXM", "B200", "x"]),
                },
            ),
            "parallelism": st.fixed_dictionaries(
                {},
                optional={name: st.integers(-1, 9) for name in ("dp_size", "tp_size", "pp_size", "ep_size", "cp_size")},
            ),
            "routing": st.fixed_dictionaries(
                {},
                optional={
                    "top_k": st.integers(-1, 300),
                    "capacity_factor": st.one_of(st.none(), st.floats(-1, 4)),
                    "num_expert_groups": st.integers(-1, 9),
                    "topk_groups": st.integers(-1, 9),
                    "strategy": st.sampled_from(["top_k", "base", "bogus"]),
                },
            ),
            "workload": st.fixed_dictionaries(
                {}, optional={"global_batch_size": st.integers(-1, 64), "micro_batch_size": st.integers(-1, 8)}
            ),
        },
    )


def _loads_or_scenario_error(document: Any, overrides: tuple[str, ...] = ()) -> None:
    try:
        result = scenario_from_dict(document, overrides)
    except ScenarioError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert isinstance(result, Scenario)


@given(documents)
def test_random_documents(document: Any) -> None:
    _loads_or_scenario_error(document)


@given(_plausible())
def test_plausible_documents(document: dict[str, Any]) -> None:
    _loads_or_scenario_error(document)


@given(_plausible(), st.lists(st.text(max_size=20), max_size=3))
def test_random_overrides(document: dict[str, Any], overrides: list[str]) -> None:
    _loads_or_scenario_error(document, tuple(overrides))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.sampled_from([".yaml", ".json", ".toml", ".txt"]))
def test_random_files(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        load_scenario(path)
    except ScenarioError:
        pass
