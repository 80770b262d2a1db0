"""The training step cut into published-breakdown parts: they add up to the step, each from its own mechanism."""

from __future__ import annotations

import pytest

from moesim.models import accounting
from moesim.scenario import scenario_from_dict
from moesim.sim.step import simulate


def _scenario(**changes) -> dict:  # type: ignore[no-untyped-def]
    document = {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 2, "gpu": "H800"},
        "parallelism": {"ep_size": 8, "pp_size": 2},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64},
        "simulation": {"network_mode": "fast"},
    }
    for section, values in changes.items():
        document[section] = {**document.get(section, {}), **values}
    return document


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"simulation": {"alltoall_overlap": "1f1b", "comm_sms": 20}},
        {"workload": {"activation_recompute": "full"}},
        {"workload": {"activation_recompute": "selective", "recompute_modules": ["core_attn", "moe"]}},
        {"parallelism": {"ep_size": 8, "pp_size": 2, "virtual_pipeline_size": 2}},
    ],
    ids=["1f1b", "overlap", "full-recompute", "selective", "interleaved"],
)
def test_the_parts_add_up_to_the_step(changes: dict) -> None:
    result = simulate(scenario_from_dict(_scenario(**changes)), check_memory=False)
    parts = result.breakdown
    assert sum(parts.values()) == pytest.approx(result.step_time_s, rel=1e-9)
    assert parts["bubble_s"] >= 0 and parts["backward_input_s"] > 0 and parts["backward_weight_s"] > 0
    assert (parts["overlap_hidden_s"] < 0) == ("simulation" in changes)
    assert (parts["recompute_s"] > 0) == ("workload" in changes)


def test_full_recomputation_replays_the_forward_and_weight_gradients_are_their_own() -> None:
    plain = simulate(scenario_from_dict(_scenario()), check_memory=False).breakdown
    full = simulate(scenario_from_dict(_scenario(workload={"activation_recompute": "full"})), check_memory=False)
    # the layers' forward phases again: the forward but its output head (and the waits at its collectives)
    assert 0.5 * plain["forward_s"] < full.breakdown["recompute_s"] < plain["forward_s"]
    assert full.breakdown["backward_weight_s"] == plain["backward_weight_s"]
    # a datasheet GPU without kernel tables: the weight gradient is half of each backward GEMM (2 x the forward)
    datasheet = simulate(scenario_from_dict(_scenario(cluster={"gpu": "B200"})), check_memory=False).breakdown
    assert 0 < datasheet["backward_weight_s"] < datasheet["backward_input_s"]


def test_zero_shards_expert_optimizer_states_over_the_expert_data_parallel_ranks() -> None:
    result = simulate(scenario_from_dict(_scenario(parallelism={"zero_stage": 1})), check_memory=False)
    spec = scenario_from_dict(_scenario()).model
    # busiest stage: 2 MoE layers of 256 experts over EP 8, states sharded over dp x tp / ep = 8 / 8 = 1 rank
    experts = 2 * 256 * accounting.expert_params(spec) / 8
    per_param = 2 * 12 + 2 + 2  # Adam: fp32 master and two moments, read and written; bf16 weight and gradient
    assert result.optimizer_s > experts * per_param / 4.8e12  # at most the H800's copy rate
