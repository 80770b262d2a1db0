"""What FP8 training spends around its GEMMs: the casts that make FP8 operands.

An FP8 GEMM multiplies FP8 operands, so a training stack casts each linear layer's input activation from bf16 to
FP8 (with its scales) before the forward GEMM, and writes a transposed FP8 copy of it for the weight gradient;
in the backward it does the same with the output gradient (Transformer Engine's fused cast-transpose,
`transformer_engine.pytorch` `cast_transpose`; DeepSeek-V3's per-tile quantisation, technical report section
3.3, whose transposes DeepSeek's profile shows as kernels of their own). Each is a memory-bound pass: read the
bf16 tensor (2 bytes an element), write it in FP8 (1) and its transpose (1), `CAST_BYTES_PER_ELEMENT`, plus a
kernel launch, at the measured copy bandwidth. The scales (one fp32 per 128 elements blockwise, one per tensor
otherwise) are under 4% of the FP8 bytes and left out, as are the weights' casts, which Transformer Engine makes
once a step (on the first micro-batch) rather than per micro-batch.

Which tensors: the inputs (forward) and output gradients (backward) of the attention's projections, the dense
FFNs, the experts' and shared experts' FFNs; the router and the output head run in bf16. Training only: serving
engines fuse the activations' quantisation into the kernel before (RMSNorm + quant, the activation + quant), which
the serving issue prices with the engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from moesim.models.spec import GATED_ACTIVATIONS, ModelSpec
from moesim.sim.phase import Phase

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import Layer

CAST_BYTES_PER_ELEMENT = 4.0
"""Read the bf16 tensor (2 bytes), write its FP8 copy (1) and the FP8 transpose (1)."""


Gemm = tuple[int, int, str]
"""(input width, output width, 'column' or 'row'): a TP-split GEMM as Megatron-Core splits it, column-parallel
(its output split, its input the whole hidden state) or row-parallel (its input split, its output the hidden)."""


def attention_gemms(model: ModelSpec, tp: int) -> list[Gemm]:
    """A layer's attention projections on one TP rank, per token."""
    heads = max(1, model.num_attention_heads // tp)
    if model.attention_type == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim  # type: ignore[operator]
        latent = model.kv_lora_rank + model.qk_rope_head_dim  # type: ignore[operator]
        gemms: list[Gemm] = [(model.hidden_size, latent, "column")]
        if model.q_lora_rank:
            gemms += [(model.hidden_size, model.q_lora_rank, "column"), (model.q_lora_rank, heads * qk, "column")]
        else:
            gemms.append((model.hidden_size, heads * qk, "column"))
        value = heads * (model.qk_nope_head_dim + model.v_head_dim)  # type: ignore[operator]
        gemms.append((model.kv_lora_rank, value, "column"))  # type: ignore[arg-type]
        return gemms + [(heads * model.v_head_dim, model.hidden_size, "row")]  # type: ignore[operator]
    q_width = heads * model.attention_head_dim
    kv_width = 2 * max(1, model.kv_heads // tp) * model.attention_head_dim
    return [(model.hidden_size, q_width + kv_width, "column"), (q_width, model.hidden_size, "row")]


def ffn_gemms(hidden: int, inner: int, activation: str) -> list[Gemm]:
    """An FFN's two projections (the gated one's up and gate together), `inner` already a TP rank's share."""
    up = 2 * inner if activation in GATED_ACTIVATIONS else inner
    return [(hidden, up, "column"), (inner, hidden, "row")]


def cast_bytes(gemms: list[Gemm], shard: Any, gathered: Any) -> tuple[Any, Any]:
    """(forward, backward) bytes the casts of `gemms` move: their inputs, their output gradients. A tensor in the
    sequence-parallel region (a column-parallel GEMM's input, a row-parallel one's output gradient) is cast on the
    `shard` rows a rank holds, before the all-gather or after the reduce-scatter (FP8 crosses the TP group); a
    split one on the `gathered` rows. Without TP, or for experts' rows, the two are the same."""
    forward = sum(
        CAST_BYTES_PER_ELEMENT * (shard if kind == "column" else gathered) * inner for inner, _, kind in gemms
    )
    backward = sum(
        CAST_BYTES_PER_ELEMENT * (gathered if kind == "column" else shard) * width for _, width, kind in gemms
    )
    return forward, backward


def cast_phases(
    builder: "PhaseBuilder", layer: "Layer", rank_rows: Optional[list[np.ndarray]]
) -> Optional[tuple[Phase, Phase]]:
    """A layer's FP8 casts, forward and backward, per rank (`rank_rows`: each rank's rows per expert in an MoE
    layer); None where the layer's GEMMs are not FP8 or the pass is not training."""
    scenario, model, cost = builder.scenario, builder.model, builder.cost
    if not builder.fp8 or scenario.workload.mode != "training":
        return None
    gemms = attention_gemms(model, builder.tp) * (2 if layer.cross_attention else 1)
    if not layer.is_moe:
        gemms += ffn_gemms(model.hidden_size, model.intermediate_size // builder.tp, model.dense_ffn_activation)
    forward, backward = cast_bytes(gemms, builder.tokens, builder.gemm_tokens)
    casts = len(gemms)
    if layer.is_moe:
        assert rank_rows is not None
        rows = np.array([float(np.sum(rows)) for rows in rank_rows]) * builder.expert_row_gather
        experts = cast_bytes(
            ffn_gemms(model.hidden_size, builder.expert_inner, model.expert_ffn_activation), rows, rows
        )
        forward, backward, casts = forward + experts[0], backward + experts[1], casts + 2
        if model.num_shared_experts:
            inner = model.shared_expert_size * model.num_shared_experts
            shared_gemms = ffn_gemms(model.hidden_size, inner, model.expert_ffn_activation)
            shared = cast_bytes(shared_gemms, builder.tokens, builder.tokens)
            forward, backward, casts = forward + shared[0], backward + shared[1], casts + 2
    bandwidth = cost.memory_bytes_per_s * cost.memory_efficiency
    forward_s, backward_s = (
        np.zeros(builder.ranks) + moved / bandwidth + casts * cost.kernel_launch_s for moved in (forward, backward)
    )
    return Phase("fp8_casts", layer.index, forward_s), Phase("fp8_casts", layer.index, backward_s)
