"""ZeRO-2 and ZeRO-3 (FSDP) traffic in every micro-batch, and what of it a pass cannot hide.

With the weights sharded (ZeRO-3, Megatron-FSDP's `optim_grads_params`, PyTorch FSDP) each
module's weights are all-gathered before its forward and again before its backward, in every
micro-batch, and its gradients reduce-scattered after its backward; with the gradients sharded
(ZeRO-2, `optim_grads`) the reduce-scatter alone. Megatron-FSDP reduces every micro-batch for
both (its `is_delay_grad_reduce` holds only for `no_shard` and `optim`) and gathers one module
ahead on a side stream (NVIDIA/Megatron-LM `megatron/core/distributed/fsdp/src/megatron_fsdp/
megatron_fsdp.py`; FSDP v2's design notes: prefetch of exactly one module). ZeRO-1 and no
sharding reduce once a step, after the last micro-batch (`moesim.sim.step`).

The pass's modules are its layers, n of them, each with compute f (the pass's time outside its
collectives: the gathers share the links with the all-to-all and TP collectives, so they run in the
time those leave) and communication c. Prefetching one module ahead, the first gather waits and
the rest hide while c <= f: the pass grows by g + (n - 1) max(0, c - f), g the first gather. The
backward's c is its gather and its reduce-scatter (they share the links); its last reduce-scatter
runs under the next micro-batch's forward, and after the last micro-batch it ends the step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.cluster.topology import Topology
from moesim.scenario import Scenario
from moesim.sim.collectives import shard_collective_time
from moesim.sim.plan import StagePlan
from moesim.sim.stages import StagePasses


@dataclass(frozen=True)
class ShardedTraffic:
    """Per stage and micro-batch: the collectives' seconds and what each pass grows by; the step's tail."""

    gather_s: list[float]  # one all-gather of the stage's weights (forward; the backward repeats it)
    reduce_s: list[float]  # one reduce-scatter of the stage's gradients
    forward_exposed_s: list[float]
    backward_exposed_s: list[float]
    tail_s: float  # the last micro-batch's last reduce-scatter, after the last backward

    @property
    def any(self) -> bool:
        return any(self.gather_s) or any(self.reduce_s)


@dataclass(frozen=True)
class GradientGroups:
    """Who shares a rank's gradients: the dense weights over the data-parallel ranks, each layer's experts (split over
    EP x ETP) over the expert-data-parallel ranks."""

    dense: np.ndarray  # rank 0's data-parallel group
    experts: np.ndarray  # rank 0's expert-data-parallel group
    dp: int
    expert_dp: int
    expert_shards: int


def gradient_groups(scenario: Scenario, topology: Topology) -> GradientGroups:
    par = scenario.parallelism
    dp, expert_shards = par.dp_size or 1, par.ep_size * par.expert_tp_size
    expert_dp = max(1, dp * par.tp_size * par.cp_size // expert_shards)
    return GradientGroups(
        np.arange(dp) * par.model_parallel_size,
        np.unique((np.arange(expert_dp) * expert_shards) % topology.world_size),
        dp,
        expert_dp,
        expert_shards,
    )


def exposed_seconds(first_s: float, comm_s: float, compute_s: float, modules: int) -> float:
    """A pass's growth when each of its `modules` needs `comm_s` of collectives issued one module ahead on a side
    stream and computes for `compute_s` outside the links: the first module's `first_s` waits, the others wait only
    where their communication outlasts the module before them."""
    if modules <= 0:
        return 0.0
    return first_s + (modules - 1) * max(0.0, comm_s - compute_s)


def sharded_traffic(scenario: Scenario, plan: StagePlan, topology: Topology, stages: StagePasses) -> ShardedTraffic:
    """Each stage's ZeRO-2 / ZeRO-3 collectives per micro-batch and the time its passes cannot hide (none below
    ZeRO-2). The dense weights are sharded over the data-parallel ranks, the experts over the expert-data-parallel
    ranks (as the optimizer states, `moesim.sim.memory`)."""
    par, precision = scenario.parallelism, scenario.workload.precision
    count = plan.num_stages
    zero = [0.0] * count
    groups = gradient_groups(scenario, topology)
    if par.zero_stage < 2 or (groups.dp == 1 and groups.expert_dp == 1):
        return ShardedTraffic(zero, zero, zero, zero, 0.0)
    dense_group, expert_group = groups.dense, groups.experts
    algorithm = scenario.simulation.allreduce_algorithm

    def shard(ranks: np.ndarray, size_bytes: float, collective: str) -> float:
        # across nodes as the step end's: half the all-reduce by the scenario's algorithm, which, as NCCL's rings
        # on one channel per NIC do, crosses the network with 1/GPUs-a-node of the bytes per NIC
        return shard_collective_time(topology, ranks, size_bytes, collective, algorithm)

    gather, reduce, forward, backward = [], [], [], []
    for stage in range(count):
        dense = plan.stage_dense_params(stage) / par.tp_size
        experts = plan.stage_expert_params(stage) / groups.expert_shards
        g = 0.0
        if par.zero_stage >= 3:
            g = shard(dense_group, dense * precision.weight_bytes, "all_gather") + shard(
                expert_group, experts * precision.expert_weight_bytes, "all_gather"
            )
        r = shard(dense_group, dense * precision.grad_bytes, "reduce_scatter") + shard(
            expert_group, experts * precision.grad_bytes, "reduce_scatter"
        )
        modules = max(1, plan.stage_layer_count(stage))
        forward_comm, backward_comm = stages.comm_s[stage]
        forward_free = max(0.0, stages.forward_s[stage] - forward_comm) / modules
        backward_free = max(0.0, stages.backward_s[stage] - backward_comm) / modules
        gather.append(g)
        reduce.append(r)
        forward.append(exposed_seconds(g / modules, g / modules, forward_free, modules))
        backward.append(exposed_seconds(g / modules, (g + r) / modules, backward_free, modules))
    tail = max(r / max(1, plan.stage_layer_count(s)) for s, r in enumerate(reduce))
    return ShardedTraffic(gather, reduce, forward, backward, tail)


SHARDED_PHASE = "sharded_weights"
"""The phase that holds what the ZeRO-2 / ZeRO-3 collectives add to the passes."""


def with_sharded_traffic(stages: StagePasses, traffic: ShardedTraffic) -> StagePasses:
    """The stages' passes grown by what their sharded-weight collectives do not hide, as a phase of their own and
    as time in collectives (a copy: the stages may be a cached simulation)."""
    busy = []
    for stage, phases in enumerate(stages.busy):
        phases = dict(phases)
        phases[SHARDED_PHASE] = traffic.forward_exposed_s[stage] + traffic.backward_exposed_s[stage]
        busy.append(phases)
    pass_busy = [
        (
            {**forward, SHARDED_PHASE: traffic.forward_exposed_s[stage]},
            {**backward, SHARDED_PHASE: traffic.backward_exposed_s[stage]},
        )
        for stage, (forward, backward) in enumerate(stages.pass_busy)
    ]
    return replace(
        stages,
        pass_busy=pass_busy,
        forward_s=[s + e for s, e in zip(stages.forward_s, traffic.forward_exposed_s)],
        backward_s=[s + e for s, e in zip(stages.backward_s, traffic.backward_exposed_s)],
        busy=busy,
        comm_s=[
            (f + ef, b + eb)
            for (f, b), ef, eb in zip(stages.comm_s, traffic.forward_exposed_s, traffic.backward_exposed_s)
        ],
    )


def note(traffic: ShardedTraffic, zero_stage: int, micro_batches: int, stage: int) -> str:
    """One line for the run's notes: the stage's traffic per micro-batch and what it adds."""
    what = "weights all-gathered before each forward and backward, gradients" if zero_stage >= 3 else "gradients"
    added = (traffic.forward_exposed_s[stage] + traffic.backward_exposed_s[stage]) * micro_batches + traffic.tail_s
    return (
        f"ZeRO-{zero_stage}: {what} reduce-scattered in every micro-batch (Megatron-FSDP's way): stage {stage} "
        f"gathers {traffic.gather_s[stage] * 1e3:,.1f} ms and reduce-scatters {traffic.reduce_s[stage] * 1e3:,.1f} "
        f"ms a micro-batch, prefetched a layer ahead; {added:.3f} s of a step not hidden"
    )
