"""Padding expert inputs to capacity (`routing.pad_to_capacity`): what GShard, DeepSpeed, Tutel and
Megatron-Core's `--moe-pad-expert-input-to-capacity` compute and send."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.routing import expert_capacity
from moesim.scenario import scenario_from_dict
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate

SWITCH = {
    "model": "switch-base-8",
    "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "A100-80GB"},
    "parallelism": {"ep_size": 8},
    "workload": {"mode": "training", "micro_batch_size": 32, "seq_len": 512, "expert_popularity_skew": 0.5},
}


def _switch(capacity_factor: float, pad: bool, skew: float = 0.5) -> dict:
    return {
        **SWITCH,
        "workload": {**SWITCH["workload"], "expert_popularity_skew": skew},
        "routing": {"strategy": "top_k", "capacity_factor": capacity_factor, "pad_to_capacity": pad},
    }


def test_padded_buffers_are_capacity_sized_whatever_the_routing() -> None:
    scenario = scenario_from_dict(_switch(1.5, True))
    group_tokens = 32 * 512 * 8 // 8 * 8  # micro-batch x sequence per rank, over EP 8
    routing, notes = route_layers(scenario, [1], group_tokens, 8)
    capacity = expert_capacity(group_tokens, 8, 1, 1.5)
    assert capacity == 24576
    layer = routing[0]
    bytes_per_token = 768 * 2
    # each source rank sends capacity / 8 slots to each expert (one per rank), skewed routing or not
    assert np.allclose(layer.traffic.rank_bytes, capacity / 8 * bytes_per_token)
    assert all(np.allclose(rows, capacity) for rows in layer.rank_rows)
    assert layer.load_imbalance > 1.05 and any("padded" in note for note in notes)  # the real loads are kept


def test_capacity_sweeps_show_what_padding_costs() -> None:
    padded = [simulate(scenario_from_dict(_switch(cf, True, 0.0))).step_time_s for cf in (1.25, 1.5, 2.0)]
    routed = [simulate(scenario_from_dict(_switch(cf, False, 0.0))).step_time_s for cf in (1.25, 1.5, 2.0)]
    assert padded[0] < padded[1] < padded[2]  # bigger capacity, bigger buffers and GEMMs
    assert routed[2] == pytest.approx(routed[1], rel=0.01)  # beyond the hottest expert's load nothing changes
    assert padded[2] > 1.15 * routed[2]


def test_padding_needs_a_capacity_and_is_not_executed() -> None:
    with pytest.raises(MoesimError, match="routing.pad_to_capacity: padding needs a capacity"):
        scenario_from_dict({**SWITCH, "routing": {"strategy": "top_k", "pad_to_capacity": True}})
    from moesim.executor.launch import executor_dtype

    with pytest.raises(MoesimError, match="routing.pad_to_capacity"):
        executor_dtype(scenario_from_dict(_switch(1.25, True)))
