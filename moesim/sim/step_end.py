"""The end of a training step: the gradients' data-parallel sync, the optimizer and the parameters' all-gather.

What runs after the last micro-batch's backward depends on how the optimizer is sharded (`parallelism.zero_stage`):

- no sharding (plain data parallelism): the gradients are all-reduced, every rank updates every weight;
- ZeRO-1 (Megatron-Core's distributed optimizer, `--use-distributed-optimizer`): the gradients are reduce-scattered,
  each rank updates its shard of the weights, and the updated weights are all-gathered back
  (`megatron/core/optimizer/distrib_optimizer.py`; DeepSpeed's stage 1 the same);
- ZeRO-2: the gradients were reduce-scattered in every micro-batch (`moesim.sim.sharded_weights`), the updated
  weights are all-gathered once;
- ZeRO-3: each layer's weights are gathered when a pass needs them, nothing at the end.

The gradients' collective overlaps the last backward where `simulation.overlap_grad_reduce` (Megatron's
`--overlap-grad-reduce`: each bucket's collective is issued as its gradients are final); the all-gather runs after
the optimizer, exposed, unless `simulation.overlap_param_gather` (Megatron's `--overlap-param-gather`, opt-in there)
lets each bucket's gather run ahead of its layers in the next step's first forward, where the first forward hides
it. The dense weights sync over the data-parallel ranks, the experts over the expert-data-parallel ranks; across
nodes a reduce-scatter and an all-gather are the two halves of the all-reduce by the same algorithm (so sharding
the optimizer moves what the all-reduce moved), inside a node NCCL's measured curves. The
optimizer reads and writes its states, the weights and the gradients of its shard once (Adam in fp32: a memory
pass at the measured copy rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cluster.topology import Topology
from moesim.cost.model import CostModel
from moesim.scenario import Scenario
from moesim.sim.collectives import all_reduce_time, shard_collective_time
from moesim.sim.plan import StagePlan
from moesim.sim.sharded_weights import gradient_groups


@dataclass(frozen=True)
class StepEnd:
    """Seconds of the step's end on the busiest rank: each collective's whole time and the part the passes beside
    it do not hide, and the optimizer's pass."""

    gradient_sync_s: float
    gradient_exposed_s: float
    optimizer_s: float
    param_gather_s: float
    param_gather_exposed_s: float

    @property
    def exposed_s(self) -> float:
        """What the step end adds to the step."""
        return self.gradient_exposed_s + self.optimizer_s + self.param_gather_exposed_s


def step_end(
    scenario: Scenario,
    plan: StagePlan,
    topology: Topology,
    cost: CostModel,
    held: dict[int, float],
    last_backward_s: float,
    first_forward_s: float,
    sharded_tail_s: float = 0.0,
) -> StepEnd:
    """The step end of the rank that holds the `held` stages (DualPipe: two), whose last backward pass takes
    `last_backward_s` and first forward `first_forward_s`; `sharded_tail_s`: what ZeRO-2/3's last micro-batch's
    collectives leave exposed (`moesim.sim.sharded_weights`)."""
    par, sim, precision = scenario.parallelism, scenario.simulation, scenario.workload.precision
    groups = gradient_groups(scenario, topology)
    dense = sum(plan.stage_dense_params(stage) for stage in held) / par.tp_size
    experts = sum(plan.stage_expert_params(stage) for stage in held) / groups.expert_shards

    def collective(kind: str, bytes_per_param: float) -> float:
        """The dense weights' group and the experts' group, each by the scenario's all-reduce algorithm (a
        reduce-scatter or an all-gather: its half across nodes, NCCL's measured curve inside one)."""
        total = 0.0
        for ranks, params in ((groups.dense, dense), (groups.experts, experts)):
            size = params * bytes_per_param
            if kind == "all_reduce":
                total += all_reduce_time(topology, ranks, size, sim.allreduce_algorithm)
            else:
                total += shard_collective_time(topology, ranks, size, kind, sim.allreduce_algorithm)
        return total

    gradients, gather = 0.0, 0.0
    if par.zero_stage == 0:
        gradients = collective("all_reduce", precision.grad_bytes)
    elif par.zero_stage == 1:
        gradients = collective("reduce_scatter", precision.grad_bytes)
    if par.zero_stage in (1, 2):
        gather = collective("all_gather", precision.weight_bytes)
    gradient_exposed = max(0.0, gradients - last_backward_s) if sim.overlap_grad_reduce else gradients
    gather_exposed = max(0.0, gather - first_forward_s) if sim.overlap_param_gather else gather
    dense_shard, expert_shard = dense, experts
    if par.zero_stage >= 1:
        dense_shard, expert_shard = dense / groups.dp, experts / groups.expert_dp
    per_param = 2 * precision.optimizer_bytes_per_param + precision.weight_bytes + precision.grad_bytes
    optimizer = cost.memory_seconds((dense_shard + expert_shard) * per_param)
    return StepEnd(gradients, gradient_exposed + sharded_tail_s, optimizer, gather, gather_exposed)
