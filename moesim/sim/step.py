"""`simulate(scenario) -> StepResult`: one training step (or one inference request batch) on the cluster.

The stages of the pipeline are simulated one by one on their expert-parallel group
(data-parallel replicas run the same program on other data, so one group stands for
all: a shortcut the notes state), then the 1F1B schedule composes them over the
micro-batches, and the data-parallel gradient all-reduce and optimizer step finish the
step. Inference (a static batch, `moesim.sim.inference.static_batch`): a prefill of the
batch through every stage, then `decode_tokens` decode steps at the mean context length.
"""

from __future__ import annotations

import numpy as np

from moesim.cluster.power import energy_per_million_tokens
from moesim.cluster.topology import Topology
from moesim.cost.model import CostModel
from moesim.models import accounting
from moesim.scenario import Scenario
from moesim.sim.breakdown import stage_work
from moesim.sim.device import comm_stretch, cost_model_for
from moesim.sim.inference import static_batch
from moesim.sim.layer_pairs import layer_pair_seconds
from moesim.sim.memory import MemoryBreakdown, check_fits, memory_per_gpu
from moesim.sim.plan import StagePlan
from moesim.sim.result import StepResult
from moesim.sim.routing_load import routing_summary
from moesim.sim.sharded_weights import note as sharded_note
from moesim.sim.sharded_weights import sharded_traffic, with_sharded_traffic
from moesim.sim.sources import alltoall_source, network_source, phase_sources
from moesim.sim.stages import StagePasses, simulate_stages
from moesim.sim.step_end import step_end
from moesim.sim.timeline import Slice, timeline_for
from moesim.sim.timeline.dualpipe import chunks_of, dualpipe_step
from moesim.sim.timeline.orders import stage_items


def simulate(scenario: Scenario, check_memory: bool = True) -> StepResult:
    """Simulate one step of the scenario (training) or one batch of requests (inference)."""
    plan = StagePlan(scenario)
    memory = memory_per_gpu(scenario, plan)
    if check_memory:
        check_fits(memory, scenario.workload.mode == "training")
    topology = Topology.from_cluster(scenario.cluster)
    cost = cost_model_for(scenario)
    training = scenario.workload.mode == "training"
    result = (_training_step if training else static_batch)(scenario, plan, topology, cost, memory)
    energy = energy_per_million_tokens(scenario.cluster.gpu, result.tokens_per_s_per_gpu)
    if energy is not None:
        result.energy_kwh_per_million_tokens, result.energy_source = energy.kwh_per_million_tokens, energy.source
    result.sources = phase_sources(
        cost,
        result.phase_seconds,
        scenario.workload.precision.gemm == "fp8",
        training,
        scenario.simulation.moe_kernels == "fused",
        network := network_source(topology.collectives),
        alltoall_source(
            topology.deepep if "deepep" in scenario.simulation.alltoall_algorithm else None,
            scenario.cluster.gpu.name,
            network,
        ),
    )
    return result


def _breakdown(stages: StagePasses, held: dict[int, float], work: float, pipeline: float) -> dict[str, float]:
    """The busiest rank's step in published-breakdown parts (`moesim.sim.breakdown`), bar the all-reduce and the
    optimizer, which the caller adds. `held`: the stages the rank runs and how many micro-batches go through each;
    `work`: the seconds the rank computes (overlap included)."""
    forward = sum(count * stages.forward_s[stage] for stage, count in held.items())
    backward = sum(count * stages.backward_s[stage] for stage, count in held.items())
    weight = sum(count * stages.weight_s[stage] for stage, count in held.items())
    recompute = sum(count * stages.replayed_s[stage] for stage, count in held.items())
    hidden = work - forward - backward
    if abs(hidden) <= 1e-9 * work:  # nothing overlapped: the same sums, up to rounding
        work, hidden = forward + backward, 0.0
    return {
        "forward_s": forward,
        "backward_input_s": backward - weight - recompute,
        "backward_weight_s": weight,
        "recompute_s": recompute,
        "overlap_hidden_s": hidden,
        "bubble_s": pipeline - work,
    }


def overlapped_pairs(stages: StagePasses, scenario: Scenario) -> list[float]:
    """Per stage, a steady-state forward run together with another micro-batch's backward, layer by layer in
    Megatron-Core's three slots (`moesim.sim.layer_pairs`)."""
    stretch = comm_stretch(scenario)
    return [
        layer_pair_seconds(forward_busy, backward_busy, forward, backward, stretch)
        for (forward_busy, backward_busy), forward, backward in zip(
            stages.pass_busy, stages.forward_s, stages.backward_s
        )
    ]


def _training_step(
    scenario: Scenario, plan: StagePlan, topology: Topology, cost: CostModel, memory: MemoryBreakdown
) -> StepResult:
    par, model, sim = scenario.parallelism, scenario.model, scenario.simulation
    tokens = plan.tokens_per_rank
    stages, routing, notes = simulate_stages(
        scenario, plan, cost, topology, tokens, scenario.workload.seq_len, False, True
    )
    sharded = sharded_traffic(scenario, plan, topology, stages)
    if sharded.any:
        stages = with_sharded_traffic(stages, sharded)
    forward_s, backward_s = stages.forward_s, stages.backward_s
    worst = int(np.argmax(np.add(forward_s, backward_s)))
    micro = plan.micro_batches
    p2p = (
        tokens * model.hidden_size * scenario.workload.precision.activation_bytes / topology.nic_bytes_per_s
        + topology.network_latency_s
    )
    p2p = p2p if par.pp_size > 1 else 0.0
    dualpipe = par.pipeline_schedule == "dualpipe"
    timeline = timeline_for(scenario)
    pairs = overlapped_pairs(stages, scenario) if sim.alltoall_overlap == "1f1b" else None
    pipeline_slices: list[Slice] = []
    if dualpipe:  # DeepSeek's schedule op by op (moesim.sim.timeline.dualpipe); a rank holds two chunks
        dual = dualpipe_step(
            forward_s,
            backward_s,
            stages.weight_s,
            stages.comm_s,
            micro,
            p2p,
            comm_stretch(scenario),
        )
        pipeline, work = dual.pipeline_s, dual.work_s
        held = {stage: micro / 2 for stage in chunks_of(dual.rank, plan.num_stages)}
    else:
        pipeline, pipeline_slices = timeline.pipeline(
            forward_s, backward_s, micro, p2p, par.virtual_pipeline_size, pairs
        )
        items = stage_items(forward_s, backward_s, micro, par.virtual_pipeline_size, pairs)[worst]
        work, _ = stage_work(forward_s[worst], backward_s[worst], items, par.virtual_pipeline_size)
        held = {worst: float(micro)}
    # the gradients' sync, the optimizer and the parameters' gather after the last backward (moesim.sim.step_end)
    end = step_end(
        scenario,
        plan,
        topology,
        cost,
        held,
        max(backward_s[stage] for stage in held),
        sum(forward_s[stage] for stage in held),
        sharded.tail_s,
    )
    exposed, optimizer = end.gradient_exposed_s, end.optimizer_s
    step = pipeline + end.exposed_s
    breakdown = _breakdown(stages, held, work, pipeline)
    breakdown.update(
        grad_allreduce_exposed_s=exposed, optimizer_s=optimizer, param_gather_exposed_s=end.param_gather_exposed_s
    )
    tokens_per_step = float((scenario.workload.global_batch_size or 1) * scenario.workload.seq_len)
    world = scenario.cluster.world_size
    # MFU counts the main model's FLOPs (forward + backward, no recomputation, as model cards and published MFUs
    # do); HFU also what recomputation replays and the MTP modules (`moesim.sim.mtp`)
    flops = accounting.training_flops_per_token(model, scenario.workload.seq_len)
    mfu = flops * tokens_per_step / (step * world * cost.peak_flops)
    workload = scenario.workload
    hardware_flops = accounting.training_flops_per_token(
        model, workload.seq_len, workload.activation_recompute == "full"
    )
    if workload.activation_recompute == "selective":
        hardware_flops += accounting.recomputed_flops_per_token(model, workload.seq_len, workload.recompute_modules)
    hardware_flops += 3 * plan.mtp_modules * accounting.mtp_forward_flops_per_token(model, workload.seq_len)
    hfu = hardware_flops * tokens_per_step / (step * world * cost.peak_flops)
    drop_rate, imbalance = routing_summary(routing)
    phases: dict[str, float] = {}
    for stage, count in held.items():
        for name, seconds in stages.busy[stage].items():
            phases[name] = phases.get(name, 0.0) + seconds * count
    replicas = (par.dp_size or 1) * par.tp_size * par.cp_size // par.ep_size
    notes.append(
        f"one expert-parallel group of {par.ep_size} ranks simulated per stage, standing for {replicas} "
        "identical replicas"
    )
    if sharded.any:
        notes.append(sharded_note(sharded, par.zero_stage, micro, worst))
    if dualpipe:
        first, second = chunks_of(dual.rank, plan.num_stages)
        notes.append(
            f"DualPipe (DeepSeek's schedule, per-rank clocks): the busiest rank {dual.rank} holds stages {first} and "
            f"{second}, {micro} micro-batches from both ends; it computes {dual.work_s:.3f} s and waits "
            f"{pipeline - dual.work_s:.3f} s"
        )
    else:
        notes.append(f"phase times: the busiest stage ({worst}) over {micro} micro-batches; timeline {timeline.name}")
    if pairs and not dualpipe:
        hidden = forward_s[worst] + backward_s[worst] - pairs[worst]
        notes.append(
            f"all-to-all overlap (1f1b): a steady-state forward and backward pair on stage {worst} takes "
            f"{pairs[worst] * 1e3:,.1f} ms instead of {(forward_s[worst] + backward_s[worst]) * 1e3:,.1f} ms "
            f"({hidden * 1e3:,.1f} ms of communication hidden"
            + (f", compute slowed by {sim.comm_sms} of {scenario.cluster.gpu.sms} SMs" if sim.comm_sms else "")
            + ")"
        )
    notes.append(f"compute: {cost.source}")
    return StepResult(
        scenario=scenario.name,
        mode="training",
        step_time_s=step,
        phase_seconds=phases,
        stage_forward_s=forward_s,
        stage_backward_s=backward_s,
        pipeline_s=pipeline,
        pipeline_bubble_s=max(0.0, pipeline - work),  # the busiest stage's (DualPipe: rank's) own work aside
        grad_allreduce_s=end.gradient_sync_s,
        grad_allreduce_exposed_s=exposed,
        optimizer_s=optimizer,
        breakdown=breakdown,
        schedule_parts=dict(dual.parts) if dualpipe else {},
        tokens_per_step=tokens_per_step,
        tokens_per_s=tokens_per_step / step,
        tokens_per_s_per_gpu=tokens_per_step / step / world,
        mfu=mfu,
        hfu=hfu,
        drop_rate=drop_rate,
        load_imbalance=imbalance,
        bytes_across_nodes_per_step=sum(stages.across_bytes) * micro * replicas,
        memory=memory.as_dict(),
        world_size=world,
        notes=notes,
        slices=stages.slices[worst] + pipeline_slices,
    )
