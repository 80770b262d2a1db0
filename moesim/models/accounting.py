"""Parameter, FLOP and memory accounting derived from a `ModelSpec`.

Everything here is a pure function of the architecture (no stored totals), so a user's
own variant of a model is counted the same way as a preset. Conventions:

* Parameters count every weight, bias and norm scale of the attention, FFN, router,
  norm and embedding layers. Rotary embeddings have no parameters; relative position
  biases (T5) and sinusoidal tables are left out (under 0.01% of any preset).
* Active parameters per token = everything except the routed experts a token does not
  use. Whether the input embedding table counts is a convention that publishers do not
  share (Mistral counts it, DeepSeek does not), so it is a parameter.
* FLOPs count a multiply-add as 2 FLOPs: forward = 2 x (active matmul parameters) +
  the attention-score term 2 x heads x (d_qk + d_v) x context per layer, where
  the context is seq_len / 2 on average under a causal mask (FlashAttention skips the
  masked half), seq_len without one. Training = 3 x forward (backward is twice the
  forward), 4 x with full activation recomputation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from moesim.models.attention import (  # the attention's work, re-exported: part of the accounting's face
    attention_score_flops_per_token as attention_score_flops_per_token,
)
from moesim.models.attention import decoder_attended_keys as decoder_attended_keys
from moesim.models.attention import kv_share_per_tp_rank as kv_share_per_tp_rank
from moesim.models.attention import score_flops_per_key as score_flops_per_key
from moesim.models.attention import windowed_keys as windowed_keys
from moesim.models.precision import Precision
from moesim.models.spec import GATED_ACTIVATIONS, ModelSpec


# ---------------------------------------------------------------- parameter counts
def ffn_params(hidden_size: int, inner_size: int, activation: str, bias: bool) -> int:
    """Parameters of one FFN (dense layer or one expert)."""
    matrices = 3 if activation in GATED_ACTIVATIONS else 2
    count = matrices * hidden_size * inner_size
    if bias:
        count += (matrices - 1) * inner_size + hidden_size
    return count


def norm_params(spec: ModelSpec, width: int) -> int:
    """Parameters of one normalisation layer over `width` channels."""
    return width * (2 if spec.norm_type == "layernorm" else 1)


def attention_params(spec: ModelSpec) -> int:
    """Parameters of one attention block (projections, their biases, internal norms)."""
    hidden = spec.hidden_size
    heads = spec.num_attention_heads
    if spec.attention_type == "mla":
        qk_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim  # type: ignore[operator]
        if spec.q_lora_rank:
            query = hidden * spec.q_lora_rank + spec.q_lora_rank + spec.q_lora_rank * heads * qk_dim
        else:
            query = hidden * heads * qk_dim
        latent = spec.kv_lora_rank  # type: ignore[assignment]
        key_value = (
            hidden * (latent + spec.qk_rope_head_dim)  # type: ignore[operator]
            + latent
            + latent * heads * (spec.qk_nope_head_dim + spec.v_head_dim)  # type: ignore[operator]
        )
        output = heads * spec.v_head_dim * hidden  # type: ignore[operator]
        return query + key_value + output
    head_dim = spec.attention_head_dim
    q_width = heads * head_dim
    kv_width = spec.kv_heads * head_dim
    count = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    if spec.attention_bias:
        count += q_width + 2 * kv_width + hidden
    if spec.qk_norm:
        count += 2 * head_dim
    if spec.attention_sinks:
        count += heads
    return count


def router_params(spec: ModelSpec) -> int:
    """Parameters of one router (gate) layer."""
    return spec.hidden_size * spec.num_experts + (spec.num_experts if spec.router_bias else 0)


def expert_params(spec: ModelSpec) -> int:
    """Parameters of one routed expert."""
    return ffn_params(spec.hidden_size, spec.moe_intermediate_size, spec.expert_ffn_activation, spec.ffn_bias)


def shared_expert_params(spec: ModelSpec) -> int:
    """Parameters of all shared experts of one MoE layer."""
    one = ffn_params(spec.hidden_size, spec.shared_expert_size, spec.expert_ffn_activation, spec.ffn_bias)
    return spec.num_shared_experts * one


def dense_ffn_params(spec: ModelSpec) -> int:
    """Parameters of one dense FFN layer."""
    return ffn_params(spec.hidden_size, spec.intermediate_size, spec.dense_ffn_activation, spec.ffn_bias)


def moe_ffn_params(spec: ModelSpec, routed_experts: int) -> int:
    """Parameters of one MoE FFN with `routed_experts` routed experts counted."""
    return routed_experts * expert_params(spec) + shared_expert_params(spec) + router_params(spec)


def _stack_params(spec: ModelSpec, num_layers: int, cross_attention: bool, routed_experts: int) -> int:
    """Parameters of one stack of layers plus its final norm."""
    per_layer_common = attention_params(spec) + 2 * norm_params(spec, spec.hidden_size)
    if cross_attention:
        per_layer_common += attention_params(spec) + norm_params(spec, spec.hidden_size)
    moe_layers = spec.moe_layers_in_stack(num_layers)
    dense_layers = num_layers - moe_layers
    return (
        num_layers * per_layer_common
        + moe_layers * moe_ffn_params(spec, routed_experts)
        + dense_layers * dense_ffn_params(spec)
        + norm_params(spec, spec.hidden_size)
    )


def embedding_params(spec: ModelSpec) -> int:
    """Input embedding table."""
    return spec.vocab_size * spec.hidden_size


def output_head_params(spec: ModelSpec) -> int:
    """Output (LM head) projection; zero when tied to the input embedding."""
    return 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size


def _layer_params(spec: ModelSpec, routed_experts: int) -> int:
    """All transformer-layer parameters (every stack) with `routed_experts` per MoE layer."""
    total = _stack_params(spec, spec.num_layers, spec.architecture == "encoder_decoder", routed_experts)
    if spec.num_encoder_layers:
        total += _stack_params(spec, spec.num_encoder_layers, False, routed_experts)
    return total


def total_params(spec: ModelSpec) -> int:
    """Every parameter of the model."""
    return _layer_params(spec, spec.num_experts) + embedding_params(spec) + output_head_params(spec)


def active_params(spec: ModelSpec, count_input_embedding: bool = True) -> int:
    """Parameters one token uses: all but the routed experts it is not sent to.

    `count_input_embedding` includes the input embedding table (a lookup, no FLOPs);
    model cards differ on this, see the module docstring.
    """
    count = _layer_params(spec, spec.top_k) + output_head_params(spec)
    if count_input_embedding or spec.tie_word_embeddings:
        # A tied table is also the output projection, so it is always in use.
        count += embedding_params(spec)
    return count


def expert_params_total(spec: ModelSpec) -> int:
    """Parameters held in routed experts across the model (what expert parallelism shards)."""
    return spec.num_moe_layers * spec.num_experts * expert_params(spec)


# ---------------------------------------------------------------- FLOPs
def _matmul_params_per_token(spec: ModelSpec) -> int:
    """Weights a token multiplies against (the input embedding is a lookup)."""
    return _layer_params(spec, spec.top_k) + spec.vocab_size * spec.hidden_size


def forward_flops_per_token(spec: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """Forward FLOPs per token: dense matmuls of the active path plus attention scores."""
    return 2.0 * _matmul_params_per_token(spec) + attention_score_flops_per_token(spec, seq_len, causal)


def training_flops_per_token(spec: ModelSpec, seq_len: int, recompute: bool = False, causal: bool = True) -> float:
    """Forward + backward FLOPs per token (backward = 2 x forward; +1 forward if recomputing)."""
    return (4.0 if recompute else 3.0) * forward_flops_per_token(spec, seq_len, causal)


def mtp_entry_params(spec: ModelSpec) -> int:
    """An MTP module's own parameters before its block: the 2h -> h projection and its two input norms and the
    final norm before the shared output head (DeepSeek-V3's `eh_proj`, `enorm`, `hnorm`, `shared_head.norm`)."""
    return 2 * spec.hidden_size * spec.hidden_size + 3 * norm_params(spec, spec.hidden_size)


def mtp_forward_flops_per_token(spec: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """One MTP module's forward FLOPs per token: its projection, its block (attention and, in an MoE model, the
    active MoE FFN) with its attention scores, and the shared output head."""
    ffn = moe_ffn_params(spec, spec.top_k) if spec.num_experts > 1 else dense_ffn_params(spec)
    matmul = 2 * spec.hidden_size * spec.hidden_size + attention_params(spec) + ffn
    matmul += spec.vocab_size * spec.hidden_size
    keys = seq_len / 2 if causal else seq_len  # a full-attention block: a causal query sees half on average
    return 2.0 * matmul + score_flops_per_key(spec) * keys


def megatron_flops_per_token(spec: ModelSpec, seq_len: int, causal_halved: bool = False) -> float:
    """Training FLOPs per token as Megatron-LM counts them for its "TFLOP/s per GPU" (`training.py`,
    `num_floating_point_operations`, the form of the MCore v0.9-v0.11 releases): 12 L h^2 x [attention (1 + kv
    groups / heads + s / h) x q / h + experts (ffn / h) x top-k x 3/2 for SwiGLU + shared experts + logits
    V / (2 L h)]: the full, not causal, score matrix (`causal_halved` for later releases that halve it), every
    layer's MLP counted as routed, no recomputation, the vocabulary unpadded."""
    if spec.attention_type == "mla" or spec.num_dense_layers or spec.architecture != "decoder":
        raise ValueError(f"{spec.name}: Megatron's v0.9 count covers decoder-only GQA models whose every layer is MoE")
    hidden, layers = spec.hidden_size, spec.num_layers
    heads = spec.num_attention_heads
    query_ratio = heads * spec.attention_head_dim / hidden
    gated = 1.5 if spec.expert_ffn_activation in GATED_ACTIVATIONS else 1.0
    routed = spec.top_k if spec.num_experts > 1 else 1
    score = seq_len / hidden / (2 if causal_halved else 1)
    attention = (1 + spec.kv_heads / heads + score) * query_ratio
    mlp = spec.moe_intermediate_size / hidden * routed * gated
    shared = spec.shared_expert_size * spec.num_shared_experts / hidden * gated
    logits = spec.vocab_size / (2 * layers * hidden)
    return 12.0 * layers * hidden * hidden * (attention + mlp + shared + logits)


def recomputed_flops_per_token(spec: ModelSpec, seq_len: int, modules: Sequence[str], causal: bool = True) -> float:
    """Matmul and attention FLOPs per token that selective recomputation of `modules` replays (norms and the
    experts' activation function are element-wise: no FLOPs counted)."""
    flops = 0.0
    if "core_attn" in modules:
        flops += attention_score_flops_per_token(spec, seq_len, causal)
    if "mla_up_proj" in modules and spec.attention_type == "mla":
        qk_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim  # type: ignore[operator]
        heads = spec.num_attention_heads
        up = (spec.q_lora_rank or 0) * heads * qk_dim + spec.kv_lora_rank * heads * (  # type: ignore[operator]
            spec.qk_nope_head_dim + spec.v_head_dim  # type: ignore[operator]
        )
        flops += 2.0 * up * (spec.num_layers + spec.num_encoder_layers)
    if "mlp" in modules:
        flops += 2.0 * dense_ffn_params(spec) * spec.num_dense_layers
    if "moe" in modules:
        active = spec.top_k * expert_params(spec) + shared_expert_params(spec) + router_params(spec)
        flops += 2.0 * active * spec.num_moe_layers
    return flops


# ---------------------------------------------------------------- memory
@dataclass(frozen=True)
class TrainingStateBytes:
    """Bytes of model state for training (whole model, before any sharding)."""

    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def training_state_bytes(spec: ModelSpec, precision: Precision | None = None) -> TrainingStateBytes:
    """Weights, gradients and optimizer states (master copy + moments) for the whole model."""
    precision = precision or Precision()
    params = total_params(spec)
    return TrainingStateBytes(
        weights_bytes=params * precision.weight_bytes,
        grads_bytes=params * precision.grad_bytes,
        optimizer_bytes=params * precision.optimizer_bytes_per_param,
    )


RECOMPUTE_MODULES = ("core_attn", "mla_up_proj", "layernorm", "moe_act", "mlp", "moe")
"""Megatron-Core's selective recomputation modules (`--recompute-modules`): what each drops is in
`activation_bytes_per_token`, what each replays in `moesim.sim.phases`."""


def activation_bytes_per_token(
    spec: ModelSpec, precision: Precision | None = None, recompute: str = "none", modules: Sequence[str] = ()
) -> int:
    """Activation memory kept for the backward pass, bytes per token, all layers.

    Follows the accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation
    in Large Transformer Models"), with a fused attention kernel (no seq_len^2 score
    matrix, only the fp32 log-sum-exp per head) and no dropout masks. An MoE layer keeps
    the router logits (fp32) and, per routed copy of the token, the expert's input and
    intermediate tensors. The linear layers' inputs (the norms' outputs, MLA's latents, the
    attention output, the experts' inputs and activation outputs) are kept in
    `precision.linear_inputs` (DeepSeek-V3: fp8), the rest in the activations' format.
    `recompute="full"` keeps only each layer's input; `"selective"` drops what the recomputed
    `modules` (`RECOMPUTE_MODULES`) rebuild in the backward: `core_attn` the attention output
    and its log-sum-exp, `mla_up_proj` MLA's up-projected queries, keys and values (the
    latents stay), `layernorm` the norms' inputs, `moe_act` the experts' activation outputs,
    `mlp` a dense FFN's tensors but its input, `moe` an MoE layer's routed and shared tensors
    and router logits but its input.
    """
    precision = precision or Precision()
    element, linear = precision.activation_bytes, precision.linear_input_bytes
    hidden = spec.hidden_size
    if recompute == "full":
        return (spec.num_layers + spec.num_encoder_layers) * hidden * element
    if recompute not in ("none", "selective"):
        raise ValueError(f"recompute must be 'none', 'selective' or 'full', got {recompute!r}")
    dropped = set(modules) if recompute == "selective" else set()
    unknown = dropped - set(RECOMPUTE_MODULES)
    if unknown:
        raise ValueError(f"unknown recompute modules {sorted(unknown)}; known: {', '.join(RECOMPUTE_MODULES)}")
    heads = spec.num_attention_heads
    if spec.attention_type == "mla":
        qk_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim  # type: ignore[operator]
        latents = (spec.q_lora_rank or 0) + spec.kv_lora_rank + spec.qk_rope_head_dim  # type: ignore[operator]
        heads_qkv = 2 * heads * qk_dim + heads * spec.v_head_dim  # type: ignore[operator]
        output = heads * spec.v_head_dim  # type: ignore[operator]
    else:
        latents = 0
        heads_qkv = heads * spec.attention_head_dim + 2 * spec.kv_heads * spec.attention_head_dim
        output = heads * spec.attention_head_dim
    attention = (hidden + latents) * linear  # the projections' inputs
    attention += 0 if "mla_up_proj" in dropped and spec.attention_type == "mla" else heads_qkv * element
    attention += 0 if "core_attn" in dropped else output * linear + 4 * heads  # output (o_proj's input), fp32 lse
    norms = 0 if "layernorm" in dropped else 2 * hidden * element

    def ffn(inner: int, activation: str, keep_activation_output: bool) -> float:
        projections = 2 if activation in GATED_ACTIVATIONS else 1
        return hidden * linear + projections * inner * element + (inner * linear if keep_activation_output else 0)

    dense_ffn = hidden * linear if "mlp" in dropped else ffn(spec.intermediate_size, spec.dense_ffn_activation, True)
    keep_act = "moe_act" not in dropped
    routed = spec.top_k * ffn(spec.moe_intermediate_size, spec.expert_ffn_activation, keep_act)
    shared = spec.num_shared_experts * ffn(spec.shared_expert_size, spec.expert_ffn_activation, keep_act)
    moe_ffn = hidden * linear + (0 if "moe" in dropped else routed + shared + 4 * spec.num_experts)
    cross = spec.num_layers * (attention + hidden * element) if spec.architecture == "encoder_decoder" else 0
    layers = spec.num_layers + spec.num_encoder_layers
    return int(layers * (attention + norms) + spec.num_moe_layers * moe_ffn + spec.num_dense_layers * dense_ffn + cross)


def kv_cache_bytes_per_token(spec: ModelSpec, precision: Precision | None = None) -> int:
    """KV-cache bytes per generated or prompt token, all decoder layers.

    GQA caches K and V for every key/value head; MLA caches only the compressed latent
    plus the decoupled rotary key (DeepSeek-V2 paper, section 2.1). Encoder-decoder
    models also keep a cross-attention cache that depends on the source length; it is
    not included.
    """
    precision = precision or Precision()
    if spec.attention_type == "mla":
        per_layer = spec.kv_lora_rank + spec.qk_rope_head_dim  # type: ignore[operator]
    else:
        per_layer = 2 * spec.kv_heads * spec.attention_head_dim
    return spec.num_layers * per_layer * precision.activation_bytes


@dataclass(frozen=True)
class ModelSummary:
    """The figures `moesim presets show` prints for a model."""

    name: str
    total_params: int
    active_params: int
    active_params_without_input_embedding: int
    expert_params: int
    num_experts: int
    num_shared_experts: int
    top_k: int
    num_moe_layers: int
    num_dense_layers: int
    seq_len: int
    flops_per_token: float
    training_flops_per_token: float
    training_state_bytes: int
    activation_bytes_per_token: int
    kv_cache_bytes_per_token: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(spec: ModelSpec, seq_len: int | None = None, precision: Precision | None = None) -> ModelSummary:
    """All headline figures of a model at `seq_len` (default: its context length)."""
    seq_len = seq_len or spec.max_seq_len
    return ModelSummary(
        name=spec.name,
        total_params=total_params(spec),
        active_params=active_params(spec),
        active_params_without_input_embedding=active_params(spec, count_input_embedding=False),
        expert_params=expert_params_total(spec),
        num_experts=spec.num_experts,
        num_shared_experts=spec.num_shared_experts,
        top_k=spec.top_k,
        num_moe_layers=spec.num_moe_layers,
        num_dense_layers=spec.num_dense_layers,
        seq_len=seq_len,
        flops_per_token=forward_flops_per_token(spec, seq_len),
        training_flops_per_token=training_flops_per_token(spec, seq_len),
        training_state_bytes=training_state_bytes(spec, precision).total_bytes,
        activation_bytes_per_token=activation_bytes_per_token(spec, precision),
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(spec, precision),
    )
