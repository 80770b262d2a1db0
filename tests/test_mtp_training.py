"""Multi-token prediction in training (`moesim.sim.mtp`) and the scenario's own pipeline split: the MTP block is
one more layer on the last stage, its entry and its head pass priced in closed form, none of it when serving."""

from __future__ import annotations

import pytest

from moesim.cluster.topology import Topology
from moesim.errors import ScenarioError
from moesim.models import accounting
from moesim.scenario import scenario_from_dict
from moesim.sim.device import cost_model_for
from moesim.sim.mtp import MTP_PHASE
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate


def _document(mode: str = "training", **parallelism: object) -> dict:
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 6, "first_k_dense_layers": 1},
        "cluster": {"preset": "hgx-h800", "num_nodes": 4},
        "parallelism": {"ep_size": 16, "pp_size": 2, **parallelism},
        "workload": {"mode": mode, "seq_len": 4096, "global_batch_size": 32},
        "routing": {"strategy": "balanced", "capacity_factor": None},
        "simulation": {"network_mode": "fast"},
    }


def test_the_mtp_block_is_the_last_stages_last_layer_in_training_only() -> None:
    plan = StagePlan(scenario_from_dict(_document()))
    assert plan.mtp_modules == 1  # DeepSeek-V3's num_nextn_predict_layers
    assert [len(stage) for stage in plan.stages] == [4, 3]  # 7 layers, earlier stages taking the remainder
    last = plan.stages[-1][-1]
    assert last.mtp and last.is_moe and last.index == 6
    assert plan.stage_moe_layer_count(1) == 3
    serving = StagePlan(scenario_from_dict(_document(mode="inference")))
    assert serving.mtp_modules == 0 and len(serving.layers) == 6
    off = scenario_from_dict(_document(pipeline_layers=[4, 2]), ["workload.train_mtp=false"])
    assert StagePlan(off).mtp_modules == 0  # the same layers on each stage, bar the MTP block
    # the MTP entry's own weights: the 2h -> h projection and three norms
    model = plan.scenario.model
    extra = plan.stage_dense_params(1) - StagePlan(off).stage_dense_params(1)
    block = accounting.attention_params(model) + 2 * model.hidden_size + accounting.shared_expert_params(model)
    block += accounting.router_params(model)
    assert extra == pytest.approx(accounting.mtp_entry_params(model) + block)
    assert accounting.mtp_entry_params(model) == 2 * 7168 * 7168 + 3 * 7168


def test_the_last_stage_runs_the_entry_and_a_second_head_pass() -> None:
    scenario = scenario_from_dict(_document())
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    tokens = plan.tokens_per_rank
    routing, _ = route_layers(scenario, [0], tokens * 16, topology.gpus_per_node)
    cost = cost_model_for(scenario)
    builder = PhaseBuilder(scenario, plan, cost, topology, tokens, 4096)
    program = builder.stage_program(1, routing, plan.stage_moe_layer_count(0))
    names = [phase.name for phase in program.forward]
    assert names.count("lm_head") == 2 and names.count(MTP_PHASE) == 1
    entry = next(phase for phase in program.forward if phase.name == MTP_PHASE)
    hidden, element = 7168, 2
    memory = cost.memory_seconds(tokens * hidden * element * 7)  # embedding, two norms, the concatenation
    projection = float(cost.gemm_seconds(tokens, 2 * hidden, hidden, fp8=builder.fp8))
    assert float(entry.seconds[0]) == pytest.approx(memory + projection)
    first = builder.stage_program(0, routing, 0)
    assert [phase.name for phase in first.forward].count("lm_head") == 0


def test_the_scenarios_pipeline_split_is_checked_and_used() -> None:
    plan = StagePlan(scenario_from_dict(_document(pipeline_layers=[5, 2])))
    assert [len(stage) for stage in plan.stages] == [5, 2] and plan.stages[-1][-1].mtp
    with pytest.raises(ScenarioError, match=r"parallelism.pipeline_layers: \[4, 2\] .* 7 in all .* and 1 MTP"):
        scenario_from_dict(_document(pipeline_layers=[4, 2]))
    with pytest.raises(ScenarioError, match="parallelism.pipeline_layers"):
        scenario_from_dict(_document(pipeline_layers=[7]))
    unbalanced = simulate(scenario_from_dict(_document(pipeline_layers=[2, 5])), check_memory=False)
    balanced = simulate(scenario_from_dict(_document(pipeline_layers=[4, 3])), check_memory=False)
    assert unbalanced.step_time_s > balanced.step_time_s  # the last stage, with the heads, takes the longest
    assert balanced.phase_seconds[MTP_PHASE] > 0
    assert balanced.sources[MTP_PHASE].startswith("dense_gemm: ")  # a compute phase, not the network
