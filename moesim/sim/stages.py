"""The stages of one expert-parallel group, simulated: routed once, their phases built and run on the scenario's
timeline (`timeline.timeline_for`), and kept for reuse by scenarios that differ only in their data-parallel
size."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field

from moesim.cluster.topology import Topology
from moesim.cost.model import CostModel
from moesim.reuse import reuse
from moesim.scenario import Scenario
from moesim.sim.breakdown import weight_gradient_seconds
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan, expert_group_tokens
from moesim.sim.routing_load import LayerRouting, route_layers
from moesim.sim.timeline import Slice, timeline_for


@dataclass
class StagePasses:
    """Simulated passes of the stages: seconds, phase breakdown and slices, identical stages simulated once."""

    forward_s: list[float]
    backward_s: list[float]
    busy: list[dict[str, float]]
    slices: list[list[Slice]]
    across_bytes: list[float]
    comm_s: list[tuple[float, float]] = field(default_factory=list)  # (forward, backward) seconds in collectives
    replayed_s: list[float] = field(default_factory=list)  # recomputed seconds per backward
    weight_s: list[float] = field(default_factory=list)  # weight-gradient GEMM seconds per backward
    pass_busy: list[tuple[dict[str, float], dict[str, float]]] = field(default_factory=list)  # per pass, by phase


STAGE_CACHE_SIZE = 16
"""Stage simulations kept for reuse (a plan evaluates many layouts that differ only in their data-parallel size)."""

_stage_cache: OrderedDict[str, tuple[StagePasses, list[LayerRouting], list[str]]] = OrderedDict()


def expert_group_document(scenario: Scenario, keep_nodes: bool = False, leave_out: tuple[str, ...] = ()) -> dict:
    """The scenario as one expert-parallel group sees it: without its data-parallel size (node count, dp_size,
    global batch: they set the micro-batch count and the gradient all-reduce, which the callers add; the node
    count stays with `keep_nodes`), its labels and the sections in `leave_out`. The group's ranks and links are
    the same in any cluster that holds it."""
    exclude: dict = {name: True for name in ("name", "description", "sweep", *leave_out)}
    exclude.update(
        cluster=set() if keep_nodes else {"num_nodes"}, parallelism={"dp_size"}, workload={"global_batch_size"}
    )
    return scenario.model_dump(mode="json", exclude=exclude)


def stage_cache_key(
    scenario: Scenario, tokens: int, context: int, decode: bool, backward: bool, tp_gathers: bool = True
) -> str:
    """What one expert-parallel group's stage programs depend on (`expert_group_document`)."""
    return json.dumps([expert_group_document(scenario), tokens, context, decode, backward, tp_gathers], sort_keys=True)


def simulate_stages(
    scenario: Scenario,
    plan: StagePlan,
    cost: CostModel,
    topology: Topology,
    tokens: int,
    context: int,
    decode: bool,
    backward: bool,
    tp_gathers: bool = True,
) -> tuple[StagePasses, list[LayerRouting], list[str]]:
    """Each stage's pass times, busy times and slices, its routing and notes: simulated, or reused from a scenario
    that differs only in its data-parallel size (`stage_cache_key`). `tokens` are a rank's sequence-parallel share
    of its TP group's (`tp_gathers`, training and `run`'s static batch), or the TP group's own (serving's attention
    ranks); see `PhaseBuilder.gemm_tokens`."""
    key = stage_cache_key(scenario, tokens, context, decode, backward, tp_gathers)
    stages, routing, notes = reuse(
        _stage_cache,
        key,
        STAGE_CACHE_SIZE,
        lambda: _run_stages(scenario, plan, cost, topology, tokens, context, decode, backward, tp_gathers),
    )
    return stages, routing, list(notes)  # callers add notes of their own


def _run_stages(
    scenario: Scenario,
    plan: StagePlan,
    cost: CostModel,
    topology: Topology,
    tokens: int,
    context: int,
    decode: bool,
    backward: bool,
    tp_gathers: bool,
) -> tuple[StagePasses, list[LayerRouting], list[str]]:
    """Route once, build each stage's phases, and run them on the scenario's timeline."""
    par = scenario.parallelism
    all_moe = list(range(plan.scenario.model.num_moe_layers))
    routed = expert_group_tokens(scenario, tokens, tp_gathers)
    routing, notes = route_layers(scenario, all_moe, routed, topology.gpus_per_node)
    builder = PhaseBuilder(scenario, plan, cost, topology, tokens, context, decode, tp_gathers)
    timeline = timeline_for(scenario)
    cache: dict[tuple, tuple] = {}
    result = StagePasses([], [], [], [], [])
    for stage in range(plan.num_stages):
        first_moe = sum(plan.stage_moe_layer_count(s) for s in range(stage))
        signature = (
            stage == 0,
            stage == plan.num_stages - 1,
            tuple((layer.is_moe, layer.cross_attention) for layer in plan.stages[stage]),
            tuple((first_moe + n) % max(1, len(routing)) for n in range(plan.stage_moe_layer_count(stage))),
        )
        if signature not in cache:
            program = builder.stage_program(stage, routing, first_moe)
            passes = [("forward" if not decode else "decode", program.forward)]
            if backward:
                passes.append(("backward", program.backward))
            seconds, busy, slices, comm, by_pass = [], {}, [], [], []
            for name, phases in passes:
                run = timeline.stage(phases, par.ep_size, name, start=sum(seconds))
                took, pass_busy = run.seconds, run.busy
                slices += run.slices
                seconds.append(took)
                # in the phases' order, not a set's: a set of strings iterates in the hash's order, which moved the
                # sum's last digit from one process to the next
                collectives = dict.fromkeys(phase.name for phase in phases if phase.collective)
                comm.append(sum(pass_busy.get(phase_name, 0.0) for phase_name in collectives))
                by_pass.append(dict(pass_busy))
                for key, value in pass_busy.items():
                    busy[key] = busy.get(key, 0.0) + value
            across = sum(
                p.bytes_across_nodes for p in program.forward + (program.backward if backward else []) if p.collective
            )
            weight = weight_gradient_seconds(builder, stage, routing, first_moe) if backward else 0.0
            cache[signature] = (seconds, busy, slices, across, comm, program.replayed_s, weight, by_pass)
        seconds, busy, slices, across, comm, replayed, weight, by_pass = cache[signature]
        result.forward_s.append(seconds[0])
        result.backward_s.append(seconds[1] if backward else 0.0)
        result.busy.append(busy)
        result.slices.append(slices)
        result.across_bytes.append(across)
        result.comm_s.append((comm[0], comm[1] if backward else 0.0))
        result.replayed_s.append(replayed if backward else 0.0)
        result.weight_s.append(weight)
        result.pass_busy.append((by_pass[0], by_pass[1] if backward else {}))
    if len(cache) < plan.num_stages:
        notes.append(f"{plan.num_stages} pipeline stages, {len(cache)} distinct: identical stages simulated once")
    return result, routing, notes
