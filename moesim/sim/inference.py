"""The simulator's inference pass, and the two ways moesim serves requests with it.

One forward pass of an expert-parallel group over a number of tokens per rank, stage by stage (`simulate_stages`:
routed once, each stage's phases run on the network model, identical stages and data-parallel sizes reused), is
what both inference paths price:

- a **static batch** (`static_batch`, `moesim run` on an inference scenario): the whole batch prefilled, then
  every sequence decoded together step by step at the mean context, as an offline benchmark runs a fixed batch;
- **continuous batching** (`moesim serve`, `moesim.serving`): requests arrive, join and leave an engine's batch
  iteration by iteration; `serving.iteration.IterationCost` prices each iteration from an `InferencePass` (the
  pass without its attention on a grid of token counts, plus the iteration's own attention and output head).

`InferencePass` is the face serving uses: nothing in `moesim.serving` imports another simulator module.
"""

from __future__ import annotations

from typing import Any, Optional

from moesim.cluster.topology import Topology
from moesim.cost.model import CostModel
from moesim.models import accounting
from moesim.scenario import Scenario
from moesim.sim.device import comm_stretch, cost_model_for
from moesim.sim.memory import MemoryBreakdown, memory_per_gpu
from moesim.sim.phase import output_head_seconds
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.result import StepResult
from moesim.sim.routing_load import routing_summary
from moesim.sim.stages import StagePasses, expert_group_document, simulate_stages

__all__ = ["InferencePass", "expert_group_document", "static_batch"]


class InferencePass:
    """The forward pass of one expert-parallel group of `scenario`, and the parts of it an engine iteration prices
    on its own (attention by layer, the output head, the KV cache's room)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.plan = StagePlan(scenario)
        self.cost = cost_model_for(scenario)
        self.topology = Topology.from_cluster(scenario.cluster)

    def stages(
        self, tokens: int, context: int = 1, decode: bool = False, scenario: Optional[Scenario] = None
    ) -> StagePasses:
        """Each stage's forward pass over `tokens` tokens per rank (prompt tokens of `context` keys, or decode
        tokens reading `context` cached ones): seconds, busy seconds by phase, seconds in collectives. `scenario`
        runs another scenario's settings (its collectives, say) on this pass's stages, cost model and topology."""
        passes, _, _ = simulate_stages(  # serving's tokens are an attention rank's: its TP group's own
            scenario or self.scenario, self.plan, self.cost, self.topology, tokens, context, decode, False, False
        )
        return passes

    def comm_stretch(self, scenario: Optional[Scenario] = None) -> float:
        """How much longer compute runs while the collectives hold SMs (`device.comm_stretch`)."""
        return comm_stretch(scenario or self.scenario)

    def attention_seconds(self, layer: Any, tokens: int, context: int, decode: bool) -> float:
        """One layer's attention over `tokens` tokens per rank: prompt tokens of a `context`-token prompt (causal),
        or decode tokens reading `context` cached tokens."""
        builder = PhaseBuilder(self.scenario, self.plan, self.cost, self.topology, tokens, context, decode, False)
        return builder.attention(layer)[0]

    def head_seconds(self, rows: int) -> float:
        """The output head on `rows` rows: the vocabulary GEMM (a TP rank's share) and a pass over the logits."""
        model = self.scenario.model
        vocab = model.vocab_size // self.scenario.parallelism.tp_size
        return output_head_seconds(self.cost, rows, model.hidden_size, vocab)

    def memory(self) -> MemoryBreakdown:
        """Memory per GPU at the scenario's settings (weights, buffers, one pass's activations)."""
        return memory_per_gpu(self.scenario, self.plan)


def static_batch(
    scenario: Scenario, plan: StagePlan, topology: Topology, cost: CostModel, memory: MemoryBreakdown
) -> StepResult:
    """A static batch of requests (`moesim run` on an inference scenario): the prefill of the whole batch through
    every stage (in chunks where `workload.prefill_chunk_tokens` asks), then `decode_tokens` decode steps at the
    mean context, every sequence in the batch from its first token to its last."""
    par, workload = scenario.parallelism, scenario.workload
    # chunked prefill: equal chunks, each attending (causally) over the prompt as the whole pass would, so the
    # chunks' attention FLOPs add up to the unchunked prefill's
    chunks = plan.prefill_chunks
    prefill_stages, routing, notes = simulate_stages(
        scenario, plan, cost, topology, plan.prefill_tokens_per_rank, workload.seq_len, False, False
    )
    prefill = chunks * sum(prefill_stages.forward_s)
    phases: dict[str, float] = {}
    for busy in prefill_stages.busy:
        for name, value in busy.items():
            phases[f"prefill/{name}"] = phases.get(f"prefill/{name}", 0.0) + value * chunks
    slices = [piece for stage_slices in prefill_stages.slices for piece in stage_slices]
    decode_step = 0.0
    if workload.decode_tokens:
        batch_tokens = max(1, workload.micro_batch_size // max(1, par.tp_size))
        context = workload.seq_len + workload.decode_tokens // 2
        decode_stages, _, decode_notes = simulate_stages(
            scenario, plan, cost, topology, batch_tokens, context, True, False
        )
        notes += [note for note in decode_notes if note not in notes]
        decode_step = sum(decode_stages.forward_s)
        for busy in decode_stages.busy:
            for name, value in busy.items():
                phases[f"decode/{name}"] = phases.get(f"decode/{name}", 0.0) + value * workload.decode_tokens
    total = prefill + decode_step * workload.decode_tokens
    sequences = workload.micro_batch_size * (par.dp_size or 1)
    generated = sequences * max(1, workload.decode_tokens)
    world = scenario.cluster.world_size
    drop_rate, imbalance = routing_summary(routing)
    flops = accounting.forward_flops_per_token(scenario.model, workload.seq_len)
    processed = sequences * (workload.seq_len + workload.decode_tokens)
    chunking = (
        f" in {chunks} chunks of {plan.prefill_tokens_per_rank:,} tokens per rank" if chunks > 1 else " in one pass"
    )
    notes.append(
        f"inference: prefill of {workload.micro_batch_size} x {workload.seq_len} tokens per replica{chunking}, then "
        f"{workload.decode_tokens} decode steps at context {workload.seq_len + workload.decode_tokens // 2}"
    )
    notes.append(f"compute: {cost.source}")
    return StepResult(
        scenario=scenario.name,
        mode="inference",
        step_time_s=total,
        phase_seconds=phases,
        stage_forward_s=prefill_stages.forward_s,
        stage_backward_s=[],
        pipeline_s=prefill,
        pipeline_bubble_s=0.0,
        grad_allreduce_s=0.0,
        grad_allreduce_exposed_s=0.0,
        optimizer_s=0.0,
        tokens_per_step=float(generated),
        tokens_per_s=generated / total,
        tokens_per_s_per_gpu=generated / total / world,
        mfu=flops * processed / (total * world * cost.peak_flops),
        hfu=flops * processed / (total * world * cost.peak_flops),
        drop_rate=drop_rate,
        load_imbalance=imbalance,
        bytes_across_nodes_per_step=chunks * sum(prefill_stages.across_bytes),
        memory=memory.as_dict(),
        world_size=world,
        prefill_s=prefill,
        decode_step_s=decode_step,
        notes=notes,
        slices=slices,
    )
