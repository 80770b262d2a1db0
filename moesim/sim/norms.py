"""A layer's memory passes around its attention: the two norms with their residual adds, the norms its
architecture adds inside the attention, and the rotary embedding.

Each is a memory-bound pass over what it normalises, read and written (twice that backward,
`BACKWARD_MEMORY_FACTOR`). Inside the attention: Qwen3's and OLMoE's per-head RMSNorm on the queries and keys
(`qk_norm`: every query and key head a rank holds, on the attended tokens) and MLA's RMSNorms on its query and
key-value latents (DeepSeek-V3: q_a_layernorm over 1,536 and kv_a_layernorm over 512 elements a token; the
down-projections, and so their norms, run on every attended token of a tensor-parallel rank). DeepSeek's own
trace has four layer norms a layer (`validation/TRAIN_PAIR.md`).

The rotary embedding (RoPE) rotates the queries and keys a rank holds, in training one pass forward and one on
their gradients backward (MLA: the decoupled rotary part only, 64 of each head's 192 query and key dimensions, and
one shared key; DeepSeek's trace: 24 rotary kernels in its four-layer chunk pair, 1.5 ms). Serving engines fuse it
with the KV-cache write (`PhaseBuilder.attention_parts`), so it is not charged there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder


def layer_norm_seconds(builder: "PhaseBuilder") -> float:
    """The two norms and two residual adds of a layer: four memory-bound kernels (eager), or an engine's two fused
    residual-add + RMSNorm kernels (two inputs in, two out)."""
    cost, row = builder.cost, builder.tokens * builder.model.hidden_size * builder.element
    if builder.fused_kernels:
        return 2 * cost.memory_seconds(4 * row)
    return 2 * cost.memory_seconds(2 * row) + 2 * cost.memory_seconds(3 * row)


def head_norm_seconds(builder: "PhaseBuilder", heads_per_rank: int) -> float:
    """The norms inside a layer's attention (`qk_norm`'s two, MLA's latent ones), forward: one pass each."""
    model, cost, tokens = builder.model, builder.cost, builder.gemm_tokens
    widths: list[int] = []
    if model.qk_norm and model.attention_type != "mla":
        kv_heads = max(1, model.kv_heads // builder.tp)
        widths += [heads_per_rank * model.attention_head_dim, kv_heads * model.attention_head_dim]
    if model.attention_type == "mla":
        widths += [width for width in (model.q_lora_rank, model.kv_lora_rank) if width]
    return sum(cost.memory_seconds(2 * tokens * width * builder.element) for width in widths)


def rotary_seconds(builder: "PhaseBuilder", heads_per_rank: int) -> float:
    """One pass of the rotary embedding over the queries and keys a rank holds (training; 0 without RoPE)."""
    model = builder.model
    if not model.rotary or builder.scenario.workload.mode != "training":
        return 0.0
    if model.attention_type == "mla":
        width = (heads_per_rank + 1) * model.qk_rope_head_dim  # type: ignore[operator]
    else:
        width = (heads_per_rank + max(1, model.kv_heads // builder.tp)) * model.attention_head_dim
    return builder.cost.memory_seconds(2 * builder.gemm_tokens * width * builder.element)
