"""`stack.name`: a framework's or engine's settings at once, each sourced; the scenario's own settings win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.scenario.loading import load_scenario
from moesim.scenario.stacks import STACKS, StackDefault, stack_settings
from moesim.sim.step import simulate

REPO = Path(__file__).resolve().parent.parent
SMALL = {
    "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
    "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "H100-SXM"},
    "parallelism": {"ep_size": 8},
    "workload": {"mode": "training", "micro_batch_size": 1, "seq_len": 1024},
    "simulation": {"network_mode": "fast", "max_routed_tokens": 4096},
}


@pytest.mark.parametrize("name", list(STACKS))
def test_every_stack_setting_is_a_scenario_field_it_takes(name: str) -> None:
    document = {**SMALL, "stack": {"name": name}, "serving": {"max_running": 64}}
    scenario = scenario_from_dict(document)
    for default, value in stack_settings(scenario):
        assert isinstance(default, StackDefault) and default.source
        assert value == default.value  # nothing written over it here


def test_the_scenario_wins_over_its_stack_and_the_stack_over_moesims_defaults() -> None:
    plain = scenario_from_dict(SMALL)
    megatron = scenario_from_dict({**SMALL, "stack": {"name": "megatron-core"}})
    assert plain.simulation.moe_kernels == "eager" and plain.simulation.overlap_shared_experts is True
    assert megatron.simulation.moe_kernels == "fused" and megatron.simulation.overlap_shared_experts is False
    written = scenario_from_dict(
        {**SMALL, "stack": {"name": "megatron-core"}}, ["simulation.moe_kernels=eager", "simulation.network_mode=fast"]
    )
    assert written.simulation.moe_kernels == "eager"
    kernels = dict((default.path, value) for default, value in stack_settings(written))
    assert kernels["simulation.moe_kernels"] == "eager"  # shown as the scenario's, over the stack's fused


def test_deepseeks_stack_is_what_its_scenario_spells_out() -> None:
    """The shipped DeepSeek-V3 scenario writes DeepEP, 20 SMs and fused kernels by hand; its stack says the same."""
    path = REPO / "scenarios" / "deepseek-v3-pretraining.yaml"
    spelled = load_scenario(path, ["simulation.network_mode=fast"])
    document = spelled.model_dump(mode="json")
    document["simulation"] = {"network_mode": "fast"}
    document["stack"] = {"name": "deepseek-v3"}
    by_stack = scenario_from_dict(document)
    assert by_stack.simulation == spelled.simulation
    assert simulate(by_stack).step_time_s == simulate(spelled).step_time_s


def test_an_engine_named_twice_must_agree() -> None:
    serving = {**SMALL, "workload": {"mode": "inference", "seq_len": 512}, "serving": {"engine": "vllm"}}
    assert scenario_from_dict({**serving, "stack": {"name": "vllm"}}).serving.engine == "vllm"
    with pytest.raises(MoesimError, match="stack.name: sglang and serving.engine: vllm name two engines"):
        scenario_from_dict({**serving, "stack": {"name": "sglang"}})
    filled = scenario_from_dict({**serving, "serving": {"max_running": 8}, "stack": {"name": "sglang"}})
    assert filled.serving.engine == "sglang" and filled.simulation.moe_kernels == "fused"
    training = scenario_from_dict({**SMALL, "stack": {"name": "sglang"}})  # no serving section: no engine set
    assert training.serving.engine is None


def test_an_unknown_stack_is_one_line_naming_the_choices() -> None:
    with pytest.raises(MoesimError, match="stack.name") as error:
        scenario_from_dict({**SMALL, "stack": {"name": "jax"}})
    assert "megatron-core" in str(error.value) and "\n" not in str(error.value)


def test_check_lists_what_the_stack_set_and_where_the_scenario_overrode_it(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "stack": {"name": "megatron-core"}}))
    output = subprocess.run(
        [sys.executable, "-m", "moesim", "check", str(path), "--set", "simulation.alltoall_algorithm=deepep"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        check=True,
    ).stdout
    lines = output.splitlines()
    assert "# stack megatron-core:" in lines and max(len(line) for line in lines) <= 80
    kernels = lines.index("#   simulation.moe_kernels = 'fused'")
    assert lines[kernels + 1].startswith("#     from the stack: Megatron-LM")
    dispatcher = lines.index("#   simulation.alltoall_algorithm = 'deepep'")
    assert lines[dispatcher + 1] == "#     set in the scenario over the stack's 'flat'"
    assert "CUDA graphs and host launch cost" in output


def test_deepseeks_stack_runs_its_router_eager_and_its_permutation_fused() -> None:
    """DeepSeek's training profile shows PyTorch's top-k kernels in its router and DeepEP permuting in its dispatch:
    the stack prices the router as the executor measured it (`moe_kernels: eager`'s router) and the permutation as
    one fused pass (`moe_kernels: fused`'s)."""
    document = {**SMALL, "stack": {"name": "deepseek-v3"}, "workload": {**SMALL["workload"], "mode": "training"}}
    stack = simulate(scenario_from_dict(document), check_memory=False).phase_seconds
    eager = simulate(scenario_from_dict(SMALL, ["simulation.moe_kernels=eager"]), check_memory=False).phase_seconds
    fused = scenario_from_dict(SMALL, ["simulation.moe_kernels=fused", "simulation.alltoall_algorithm=deepep"])
    fused_phases = simulate(fused, check_memory=False).phase_seconds
    assert scenario_from_dict(document).simulation.router_kernels == "eager"
    assert stack["router"] == pytest.approx(eager["router"])
    assert stack["permute"] == pytest.approx(fused_phases["permute"])
    assert stack["router"] > fused_phases["router"]
