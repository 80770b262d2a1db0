"""A forward and a backward of two micro-batches run together, layer by layer, as Megatron-Core overlaps them.

Megatron-Core's all-to-all overlap (`--overlap-moe-expert-parallel-comm`, its combined 1F1B)
runs a forward layer and a backward layer of another micro-batch as one step on two streams
(NVIDIA/Megatron-LM `megatron/core/models/common/model_chunk_schedule_plan.py`,
`TransformerLayerSchedulePlan.run`; its docstring draws the order):

    communication:  combine backward | dispatch forward -> dispatch backward | combine forward
    compute:        attention forward | experts backward -> experts forward  | attention backward

So the step has three slots, each ending before the next starts (each needs the other
stream's result): (1) the backward's combine under the forward's attention, router and
permutation; (2) the forward's dispatch under the backward's experts, then the backward's
dispatch under the forward's experts (the forward's experts need its dispatch); (3) the
forward's combine under the backward's attention. A slot takes the longer of its two streams,
the compute stretched by the SMs the communication kernels hold (`overlapped_seconds`): the sum
of the slots is at least the longer stream over the whole pair (the bound the overlap had been
played at), and equal to it only when every slot balances. The un-permutation rides with the
combine (Megatron's combine node runs it on the communication stream); the embedding, output head
and the sharded-weight waits stay outside the overlap, as do barrier waits.
"""

from __future__ import annotations

from moesim.sim.sharded_weights import SHARDED_PHASE
from moesim.sim.timeline.orders import overlapped_seconds

EXPERT_PHASES = ("experts", "shared_experts")
"""Compute of the MoE block between its dispatch and its combine ('mlp' in Megatron's schedule)."""
OUTSIDE_PHASES = ("embedding", "lm_head", "wait", SHARDED_PHASE)
"""Time a layer pair does not overlap: the model's ends (Megatron's pre- and post-process nodes run alone),
barrier waits and the sharded-weight waits."""


def _parts(busy: dict[str, float]) -> tuple[float, float, float, float, float]:
    """(attention side, experts, dispatch, combine with its un-permutation, outside) seconds of one pass."""
    experts = sum(busy.get(name, 0.0) for name in EXPERT_PHASES)
    dispatch = busy.get("dispatch", 0.0)
    combine = busy.get("combine", 0.0) + busy.get("unpermute", 0.0)
    outside = sum(busy.get(name, 0.0) for name in OUTSIDE_PHASES)
    attention = sum(busy.values()) - experts - dispatch - combine - outside
    return attention, experts, dispatch, combine, outside


def layer_pair_seconds(
    forward_busy: dict[str, float],
    backward_busy: dict[str, float],
    forward_s: float,
    backward_s: float,
    stretch: float = 1.0,
) -> float:
    """Seconds of a forward and a backward (busy seconds by phase, and each pass's own seconds) run together in
    Megatron-Core's three slots a layer; identical layers add up, so a stage's totals stand for its layers. What
    the passes' own seconds hold beyond their busy phases (ranks waiting on each other) is not overlapped."""
    attention_f, experts_f, dispatch_f, combine_f, outside_f = _parts(forward_busy)
    # the backward runs a layer's phases in reverse and keeps their names: its "combine" (with the un-permutation's
    # backward) comes first, sending the output gradients to the experts; its "dispatch" returns the input gradients
    attention_b, experts_b, dispatch_backward, combine_backward, outside_b = _parts(backward_busy)
    slots = (
        overlapped_seconds(attention_f, combine_backward, stretch)
        + overlapped_seconds(experts_b, dispatch_f, stretch)
        + overlapped_seconds(experts_f, dispatch_backward, stretch)
        + overlapped_seconds(attention_b, combine_f, stretch)
    )
    unaccounted = max(0.0, forward_s + backward_s - sum(forward_busy.values()) - sum(backward_busy.values()))
    return slots + outside_f + outside_b + unaccounted
