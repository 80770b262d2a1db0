"""ZeRO-2 / ZeRO-3 (FSDP) collectives in every micro-batch: closed forms, and what they add to a step."""

from __future__ import annotations

import numpy as np
import pytest

from moesim import scenario_from_dict
from moesim.cluster.topology import Topology
from moesim.sim.collectives import all_reduce_time, shard_collective_time
from moesim.sim.plan import StagePlan
from moesim.sim.sharded_weights import SHARDED_PHASE, exposed_seconds
from moesim.sim.step import simulate
from tests.test_sim import small_training


def test_prefetch_one_module_ahead_closed_form() -> None:
    """n modules, communication c a module, compute f: the first gather waits, then max(0, c - f) a module."""
    assert exposed_seconds(0.3, 1.0, 2.0, 10) == pytest.approx(0.3)  # hidden behind the compute
    assert exposed_seconds(0.3, 3.0, 2.0, 10) == pytest.approx(0.3 + 9 * 1.0)  # the links set the pace
    assert exposed_seconds(0.3, 3.0, 2.0, 0) == 0.0


def test_all_gather_across_nodes_is_half_a_ring_all_reduce() -> None:
    """nccl-tests' convention: an all-gather or reduce-scatter moves (n - 1) / n of the buffer once, an
    all-reduce twice; across nodes at the NIC share (50 GB/s here) with each hop's latency."""
    two_nodes = Topology(2, 8, 450e9, 8, 50e9)
    ranks, size = np.arange(16), 4e9
    gather = shard_collective_time(two_nodes, ranks, size, "all_gather")
    assert gather == pytest.approx(15 / 16 * size / 50e9 + 15 * two_nodes.network_latency_s)
    assert shard_collective_time(two_nodes, ranks, size, "reduce_scatter") == gather
    assert 2 * gather == pytest.approx(all_reduce_time(two_nodes, ranks, size, "ring"))
    assert shard_collective_time(two_nodes, np.arange(1), size, "all_gather") == 0.0
    with pytest.raises(ValueError, match="all_gather"):
        shard_collective_time(two_nodes, ranks, size, "broadcast")


def _two_node_dense_dp(zero: int, **workload: object) -> dict:
    """The small model on two nodes, EP 8 inside a node: the dense weights sharded over all 16 data-parallel
    ranks, each expert over its two expert-data-parallel ranks (one a node); two micro-batches."""
    return small_training(
        cluster={"num_nodes": 2, "gpus_per_node": 8},
        parallelism={"ep_size": 8, "zero_stage": zero},
        workload={"global_batch_size": 64, **workload},
    )


def test_zero_one_is_unchanged_and_zero_three_adds_its_gathers() -> None:
    one = simulate(scenario_from_dict(_two_node_dense_dp(1)))
    two = simulate(scenario_from_dict(_two_node_dense_dp(2)))
    three = simulate(scenario_from_dict(_two_node_dense_dp(3)))
    assert SHARDED_PHASE not in one.phase_seconds
    # ZeRO-2's reduce-scatters hide under this small model's backward (across nodes at 1/8 of the bytes a NIC, as
    # NCCL's rings on a channel per NIC carry them); ZeRO-3's gathers, needed before each layer's forward, do not
    assert three.phase_seconds[SHARDED_PHASE] > two.phase_seconds.get(SHARDED_PHASE, 0.0) >= 0
    assert three.step_time_s > one.step_time_s
    assert any("ZeRO-3" in note for note in three.notes)
    # the stage's per-micro-batch gather: the dense weights over the 16 data-parallel ranks plus a rank's experts
    # over their two expert-data-parallel ranks, each an all-gather of the whole stage across the nodes
    scenario = scenario_from_dict(_two_node_dense_dp(3))
    plan, topology = StagePlan(scenario), Topology.from_cluster(scenario.cluster)
    weight = scenario.workload.precision.weight_bytes
    algorithm = scenario.simulation.allreduce_algorithm
    dense = shard_collective_time(topology, np.arange(16), plan.stage_dense_params(0) * weight, "all_gather", algorithm)
    experts = shard_collective_time(
        topology, np.array([0, 8]), plan.stage_expert_params(0) / 8 * weight, "all_gather", algorithm
    )
    first_gather = (dense + experts) / plan.stage_layer_count(0)
    # the forward's first layer waits for its gather: at least that per micro-batch
    assert three.stage_forward_s[0] - one.stage_forward_s[0] >= first_gather * (1 - 1e-9)


def test_gathers_the_compute_cannot_hide_set_the_pace() -> None:
    """Slower NICs: the per-layer gathers outlast the per-layer compute and the pass grows by the difference,
    layer after layer; faster NICs hide all but the first."""
    slow = simulate(scenario_from_dict(_two_node_dense_dp(3), ["cluster.nic_gbps=10"]))
    fast = simulate(scenario_from_dict(_two_node_dense_dp(3), ["cluster.nic_gbps=3200"]))
    assert slow.phase_seconds[SHARDED_PHASE] > 10 * fast.phase_seconds[SHARDED_PHASE]


def test_zero_three_memory_holds_two_gathered_layers() -> None:
    """Four layers: a rank keeps its shards and two layers gathered whole (the one computing, the prefetched)."""
    four_layers = {"model": {"preset": "olmoe-1b-7b", "num_layers": 4}}
    scenario = scenario_from_dict({**_two_node_dense_dp(3), **four_layers})
    unsharded = simulate(scenario_from_dict({**_two_node_dense_dp(1), **four_layers})).memory["weights_bytes"]
    plan, weight = StagePlan(scenario), scenario.workload.precision.weight_bytes
    sharded = (plan.stage_dense_params(0) / 16 + plan.stage_expert_params(0) / 8 / 2) * weight
    expected = sharded + 2 / 4 * (unsharded - sharded)
    assert simulate(scenario).memory["weights_bytes"] == pytest.approx(expected)
