"""The step's end (`moesim.sim.step_end`): the gradients' sync by optimizer sharding, the parameters' all-gather
after the distributed optimizer, and what each overlap setting hides."""

from __future__ import annotations

import pytest

from moesim.cluster.topology import Topology
from moesim.scenario import scenario_from_dict
from moesim.sim.collectives import all_reduce_time, shard_collective_time
from moesim.sim.device import cost_model_for
from moesim.sim.plan import StagePlan
from moesim.sim.sharded_weights import gradient_groups
from moesim.sim.step import simulate
from moesim.sim.step_end import step_end


def _scenario(zero: int, **simulation: object):
    return scenario_from_dict(
        {
            "model": {"preset": "mixtral-8x7b", "num_layers": 4},
            "cluster": {"preset": "dgx-h100", "num_nodes": 4},
            "parallelism": {"ep_size": 8, "zero_stage": zero},
            "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64},
            "routing": {"strategy": "balanced", "capacity_factor": None},
            "simulation": {"network_mode": "fast", **simulation},
        }
    )


def _end(zero: int, last_backward: float = 0.0, first_forward: float = 0.0, **simulation: object):
    scenario = _scenario(zero, **simulation)
    plan, topology = StagePlan(scenario), Topology.from_cluster(scenario.cluster)
    return scenario, step_end(
        scenario, plan, topology, cost_model_for(scenario), {0: 1.0}, last_backward, first_forward
    )


def test_the_distributed_optimizer_reduce_scatters_then_gathers_what_plain_data_parallelism_all_reduces() -> None:
    """32 GPUs, EP 8: the dense weights sync over 32 data-parallel ranks on four nodes, the experts over 4
    expert-data-parallel ranks (one a node); across nodes ZeRO-1's reduce-scatter and all-gather are the two halves
    of the all-reduce, by the same algorithm."""
    scenario, plain = _end(0)
    _, sharded = _end(1)
    topology = Topology.from_cluster(scenario.cluster)
    groups = gradient_groups(scenario, topology)
    plan = StagePlan(scenario)
    dense, experts = plan.stage_dense_params(0), plan.stage_expert_params(0) / 8
    assert (groups.dp, groups.expert_dp) == (32, 4)
    reduce = all_reduce_time(topology, groups.dense, dense * 2, "auto") + all_reduce_time(
        topology, groups.experts, experts * 2, "auto"
    )
    assert plain.gradient_sync_s == pytest.approx(reduce)
    assert plain.param_gather_s == 0.0
    assert sharded.gradient_sync_s == pytest.approx(reduce / 2)
    assert sharded.param_gather_s == pytest.approx(reduce / 2)  # bf16 weights, bf16 gradients: the same bytes


def test_inside_a_node_the_halves_are_nccls_measured_reduce_scatter_and_all_gather() -> None:
    scenario = scenario_from_dict(
        {
            "model": {"preset": "mixtral-8x7b", "num_layers": 4},
            "cluster": {"preset": "dgx-h100", "num_nodes": 1},
            "parallelism": {"ep_size": 8, "zero_stage": 1},
            "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64},
            "routing": {"strategy": "balanced", "capacity_factor": None},
            "simulation": {"network_mode": "fast"},
        }
    )
    plan, topology = StagePlan(scenario), Topology.from_cluster(scenario.cluster)
    end = step_end(scenario, plan, topology, cost_model_for(scenario), {0: 1.0}, 0.0, 0.0)
    groups = gradient_groups(scenario, topology)
    assert (groups.dp, groups.expert_dp) == (8, 1)
    dense = plan.stage_dense_params(0) * 2
    assert end.gradient_sync_s == pytest.approx(shard_collective_time(topology, groups.dense, dense, "reduce_scatter"))
    assert end.param_gather_s == pytest.approx(shard_collective_time(topology, groups.dense, dense, "all_gather"))


def test_the_optimizer_pass_reads_and_writes_its_shard() -> None:
    scenario, plain = _end(0)
    _, sharded = _end(1)
    plan = StagePlan(scenario)
    dense, experts = plan.stage_dense_params(0), plan.stage_expert_params(0) / 8
    # the optimizer's pass: the fp32 master weight and two moments (12 bytes) read and written, the bf16 weight
    # and gradient, over the shard, and a launch
    per_param = 2 * 12 + 2 + 2
    cost = cost_model_for(scenario)
    bandwidth = cost.memory_bytes_per_s * cost.memory_efficiency
    shard = dense / 32 + experts / 4
    assert sharded.optimizer_s == pytest.approx(shard * per_param / bandwidth + cost.kernel_launch_s)
    assert plain.optimizer_s == pytest.approx((dense + experts) * per_param / bandwidth + cost.kernel_launch_s)


def test_what_each_overlap_hides() -> None:
    """The gradients' collective hides under the last backward (Megatron's --overlap-grad-reduce); the gather
    after the optimizer is exposed unless --overlap-param-gather lets the next step's first forward hide it."""
    _, exposed = _end(1, last_backward=0.0, first_forward=10.0)
    assert exposed.gradient_exposed_s == pytest.approx(exposed.gradient_sync_s)
    assert exposed.param_gather_s > 0
    assert exposed.param_gather_exposed_s == pytest.approx(exposed.param_gather_s)
    _, hidden = _end(1, last_backward=10.0, first_forward=10.0, overlap_param_gather=True)
    assert hidden.gradient_exposed_s == 0.0 and hidden.param_gather_exposed_s == 0.0
    _, serial = _end(1, last_backward=10.0, overlap_grad_reduce=False)
    assert serial.gradient_exposed_s == pytest.approx(serial.gradient_sync_s)
    _, zero3 = _end(3)
    assert zero3.gradient_sync_s == 0.0 and zero3.param_gather_s == 0.0  # gathered and scattered per micro-batch


def test_the_step_adds_the_exposed_gather_as_a_part_of_its_own() -> None:
    result = simulate(_scenario(1), check_memory=False)
    parts = result.breakdown
    assert parts["param_gather_exposed_s"] > 0
    assert sum(parts.values()) == pytest.approx(result.step_time_s)
    overlapped = simulate(_scenario(1, overlap_param_gather=True), check_memory=False)
    first_forward = float(overlapped.stage_forward_s[0])  # one micro-batch's forward hides what it can
    hidden = parts["param_gather_exposed_s"] - overlapped.breakdown["param_gather_exposed_s"]
    assert hidden == pytest.approx(min(first_forward, parts["param_gather_exposed_s"]))
    assert overlapped.step_time_s == pytest.approx(result.step_time_s - hidden)
