"""What FP8 training spends around its GEMMs: the casts that make a layer's FP8 operands, forward and backward.

A layer's FP8 linear layers (the attention's projections, the dense FFN, the routed and shared experts) each need
their input and output gradient quantised row-wise and column-wise; `moesim.cost.fp8_recipes` counts the memory
passes that takes with the stack's cast kernels (`workload.precision.fp8_cast_kernels`) and recipe
(`workload.precision.fp8_recipe`). This module says which tensors a layer has and where each comes from:

- an input arrives in FP8 where the tokens are dispatched in FP8 (the routed experts' up-projection; with
  DeepSeek's kernels the shared experts' too, which read the same FP8 copy, as its training profile shows) and
  where DeepSeek's SwiGLU kernel writes its output in FP8 (the down-projection);
- the experts' output gradient arrives in FP8 where the combine's backward carries it in the dispatch's format;
- the backward finds an input only as its FP8 copy where `precision.linear_inputs` is fp8 and nothing recomputes
  it (DeepSeek-V3 recomputes the norms, the MLA up-projections and the SwiGLU, report 3.3.3, 3.3.4);
- with DeepSeek's kernels and `linear_inputs: fp8`, the SwiGLU input is kept in FP8 (cast, cast back) and the
  attention output in E5M6 (report 3.3.4); recomputed up-projections cast their inputs again.

Tokens dispatched in FP8 are cast once before they leave, and their gradients once before the combine's backward
sends them. The weights are cast once a step (amortised over the step's micro-batches), and with DeepSeek's kernels
transposed in every micro-batch. Each pass runs at the measured copy bandwidth, one launch a kernel. A tensor in the
sequence-parallel region (a column-parallel GEMM's input, a row-parallel one's output gradient) is cast on the
rows a rank holds, before the all-gather or after the reduce-scatter (FP8 crosses the TP group); a split one on the
gathered rows. Training only: serving engines fuse the activations' quantisation into the kernel before, which the
serving issue prices with the engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from moesim.cost.fp8_recipes import (
    CastCost,
    FP8Linear,
    backward_casts,
    e5m6_bytes,
    forward_casts,
    kept_in_fp8_bytes,
    weight_casts_per_step,
    weight_transposes_per_micro_batch,
)
from moesim.models.precision import DTYPE_BYTES
from moesim.models.spec import GATED_ACTIVATIONS, ModelSpec
from moesim.sim.phase import Phase

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import Layer

Gemm = tuple[int, int, str]
"""(input width, output width, 'column' or 'row'): a TP-split GEMM as Megatron-Core splits it, column-parallel
(its output split, its input the whole hidden state) or row-parallel (its input split, its output the hidden)."""


def attention_gemms(model: ModelSpec, tp: int) -> list[Gemm]:
    """A layer's attention projections on one TP rank, per token: MLA's down-projections, up-projections (the two
    after the latent norms) and output projection; or the fused QKV and the output projection."""
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


def up_projection_count(model: ModelSpec) -> int:
    """MLA's latent-to-head projections among `attention_gemms` (the ones after the latent norms)."""
    if model.attention_type != "mla":
        return 0
    return 2 if model.q_lora_rank else 1


def ffn_gemms(hidden: int, inner: int, activation: str) -> list[Gemm]:
    """An FFN's two projections (the gated one's up and gate together), `inner` already a TP rank's share."""
    up = 2 * inner if activation in GATED_ACTIVATIONS else inner
    return [(hidden, up, "column"), (inner, hidden, "row")]


class _Casts:
    """Adds up one layer's casts on one rank: forward and backward bytes (per rank), kernels."""

    def __init__(self, builder: "PhaseBuilder"):
        precision = builder.scenario.workload.precision
        self.kernels, self.recipe = precision.fp8_cast_kernels, precision.fp8_recipe
        self.shard, self.gathered = builder.tokens, builder.gemm_tokens
        self.forward: Any = 0.0
        self.backward: Any = 0.0
        self.launches = [0, 0]
        self.linears = 0  # linear layers (a projection of all the local experts counts once: one batched kernel)

    def add(self, cost: CastCost, input_rows: Any, inner: int, gradient_rows: Any, width: int, backward: bool) -> None:
        moved = cost.input * input_rows * inner + cost.gradient * gradient_rows * width
        if backward:
            self.backward = self.backward + moved
        else:
            self.forward = self.forward + moved
        self.launches[backward] += cost.kernels

    def linear(self, gemm: Gemm, rows: Any = None, **flags: bool) -> None:
        """A linear's forward and backward casts; `rows` for an expert's (the same on both sides), else TP's."""
        inner, width, kind = gemm
        linear = FP8Linear(inner, width, **flags)
        self.linears += 1
        if rows is None:
            input_rows, gradient_rows = (self.shard, self.gathered) if kind == "column" else (self.gathered, self.shard)
        else:
            input_rows = gradient_rows = rows
        self.add(forward_casts(linear, self.kernels, self.recipe), input_rows, inner, gradient_rows, width, False)
        self.add(backward_casts(linear, self.kernels, self.recipe), input_rows, inner, gradient_rows, width, True)

    def recast(self, gemm: Gemm) -> None:
        """A recomputed linear casts its input again in the backward."""
        inner, width, kind = gemm
        rows = self.shard if kind == "column" else self.gathered
        self.add(forward_casts(FP8Linear(inner, width), self.kernels, self.recipe), rows, inner, 0, width, True)

    def passes(self, rows: Any, width: int, forward: float, backward: float) -> None:
        """A tensor of `rows` x `width` cast forward and cast back in the backward (one kernel each)."""
        self.forward = self.forward + forward * rows * width
        self.backward = self.backward + backward * rows * width
        self.launches[0] += 1
        self.launches[1] += 1


def _ffn(casts: _Casts, gemms: list[Gemm], rows: Any, deepseek: bool, kept: dict[str, bool], **up: bool) -> None:
    """An FFN's two linears (routed or shared experts, a dense FFN): the down-projection's input is written in FP8
    by DeepSeek's SwiGLU kernel, and kept in FP8 unless the activation is recomputed."""
    up_gemm, down_gemm = gemms
    down_gradient = up.pop("down_gradient_fp8", False)
    casts.linear(up_gemm, rows, **up)
    casts.linear(down_gemm, rows, input_fp8=deepseek, gradient_fp8=down_gradient, kept_fp8=kept["act"])
    if deepseek and kept["swiglu_fp8"]:  # the SwiGLU input kept in FP8 (report 3.3.4)
        forward, backward = kept_in_fp8_bytes()
        casts.passes(rows if rows is not None else casts.gathered, up_gemm[1], forward, backward)


def cast_phases(
    builder: "PhaseBuilder", layer: "Layer", rank_rows: Optional[list[np.ndarray]]
) -> Optional[tuple[Phase, Phase]]:
    """A layer's FP8 casts, forward and backward, per rank (`rank_rows`: each rank's rows per expert in an MoE
    layer); None where the layer's GEMMs are not FP8 or the pass is not training."""
    scenario, model, cost = builder.scenario, builder.model, builder.cost
    workload = scenario.workload
    if not builder.fp8 or workload.mode != "training":
        return None
    precision = workload.precision
    deepseek = precision.fp8_cast_kernels == "deepseek"
    full = workload.activation_recompute == "full"
    modules = set(workload.recompute_modules) if workload.activation_recompute == "selective" else set()
    fp8_inputs = precision.linear_inputs == "fp8"
    dispatch_fp8 = (precision.dispatch or precision.activations) == "fp8" and layer.is_moe
    kept = {  # which inputs the backward finds only in FP8 (the SwiGLU's input: kept in FP8 beside its output)
        "norm": fp8_inputs and not full and "layernorm" not in modules,
        "latent": fp8_inputs and not full and "mla_up_proj" not in modules,
        "act": (fp8_inputs or deepseek) and not full and "moe_act" not in modules,
        "swiglu_fp8": fp8_inputs and not full and "moe_act" in modules,
    }
    casts = _Casts(builder)
    for _ in range(2 if layer.cross_attention else 1):
        gemms = attention_gemms(model, builder.tp)
        ups = up_projection_count(model)
        first = gemms[: len(gemms) - 1 - ups]
        for gemm in first:
            casts.linear(gemm, kept_fp8=kept["norm"])
        for gemm in gemms[len(first) : -1]:
            casts.linear(gemm, kept_fp8=kept["latent"])
            if "mla_up_proj" in modules:
                casts.recast(gemm)
        output = gemms[-1]
        e5m6 = deepseek and fp8_inputs and not full and "core_attn" not in modules
        casts.linear(output, kept_fp8=fp8_inputs and not full and not e5m6 and "core_attn" not in modules)
        if e5m6:  # the attention output kept in E5M6 beside the GEMM's FP8 copy
            casts.passes(casts.gathered, output[0], *e5m6_bytes())
    if not layer.is_moe:
        gemms = ffn_gemms(model.hidden_size, model.intermediate_size // builder.tp, model.dense_ffn_activation)
        _ffn(casts, gemms, None, deepseek, kept, kept_fp8=kept["norm"])
    else:
        assert rank_rows is not None
        rows = np.array([float(np.sum(rows)) for rows in rank_rows]) * builder.expert_row_gather
        gemms = ffn_gemms(model.hidden_size, builder.expert_inner, model.expert_ffn_activation)
        routed = {"input_fp8": dispatch_fp8, "kept_fp8": dispatch_fp8 or kept["norm"]}
        _ffn(casts, gemms, rows, deepseek, kept, down_gradient_fp8=dispatch_fp8, **routed)
        if model.num_shared_experts:
            inner = model.shared_expert_size * model.num_shared_experts // builder.tp
            shared = ffn_gemms(model.hidden_size, inner, model.expert_ffn_activation)
            shares = deepseek and dispatch_fp8  # DeepSeek's shared experts read the dispatch's FP8 copy
            _ffn(casts, shared, None, deepseek, kept, input_fp8=shares, kept_fp8=shares or kept["norm"])
    if dispatch_fp8 and not builder.experts_local:  # the tokens cast before they leave; their gradients likewise
        hidden = model.hidden_size  # read in the activations' format, written as the dispatch sends it
        token_bytes = (hidden * DTYPE_BYTES[precision.activations] + precision.token_bytes(hidden, "dispatch")) / hidden
        casts.passes(builder.routed_tokens, hidden, token_bytes, token_bytes)
    weights = _weight_elements(builder, layer)
    per_step = weight_casts_per_step(casts.kernels, casts.recipe, precision.weight_bytes) / builder.plan.micro_batches
    casts.forward = casts.forward + weights * per_step
    transposes = weight_transposes_per_micro_batch(casts.kernels)
    if transposes:  # a kernel a weight (the local experts' in one batched kernel a projection)
        casts.forward = casts.forward + weights * transposes
        casts.launches[0] += casts.linears
    bandwidth = cost.memory_bytes_per_s * cost.memory_efficiency
    forward_s, backward_s = (
        np.zeros(builder.ranks) + moved / bandwidth + launches * cost.kernel_launch_s
        for moved, launches in ((casts.forward, casts.launches[0]), (casts.backward, casts.launches[1]))
    )
    return Phase("fp8_casts", layer.index, forward_s), Phase("fp8_casts", layer.index, backward_s)


def _weight_elements(builder: "PhaseBuilder", layer: "Layer") -> float:
    """FP8 weight elements a rank holds for the layer: its attention's and FFN's share (TP), its routed experts'
    (EP, ETP) and shared experts' (TP)."""
    model = builder.model
    count = (2 if layer.cross_attention else 1) * sum(i * w for i, w, _ in attention_gemms(model, builder.tp))
    if not layer.is_moe:
        inner = model.intermediate_size // builder.tp
        return count + sum(i * w for i, w, _ in ffn_gemms(model.hidden_size, inner, model.dense_ffn_activation))
    local = max(1, model.num_experts // builder.scenario.parallelism.ep_size)
    experts = ffn_gemms(model.hidden_size, builder.expert_inner, model.expert_ffn_activation)
    count += local * sum(i * w for i, w, _ in experts)
    if model.num_shared_experts:
        inner = model.shared_expert_size * model.num_shared_experts // builder.tp
        count += sum(i * w for i, w, _ in ffn_gemms(model.hidden_size, inner, model.expert_ffn_activation))
    return float(count)
