"""`ModelSpec`: the architecture of a (Mixture-of-Experts) transformer.

The field names follow the Hugging Face / Megatron configs that MoE users already read
(`num_experts`, `top_k`, `moe_intermediate_size`, `num_key_value_heads`, ...), so a
published `config.json` can be copied into a scenario almost verbatim. Everything the
accounting reports (parameters, FLOPs, memory) is derived from these fields; nothing
here stores a total.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.routing.names import RoutingStrategy

FfnActivation = Literal["swiglu", "geglu", "gelu", "relu", "silu"]
"""FFN kinds: the gated ones (`swiglu`, `geglu`) have three weight matrices, the rest two."""

GATED_ACTIVATIONS: frozenset[str] = frozenset({"swiglu", "geglu"})


class ModelSpec(BaseModel):
    """Architecture of a decoder-only or encoder-decoder (MoE) transformer."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("custom", description="Display name of the model.")
    source: str = Field("", description="Where the numbers come from (config file or paper).")
    architecture: Literal["decoder", "encoder_decoder"] = Field(
        "decoder", description="`decoder` (GPT-style) or `encoder_decoder` (T5 / GShard / NLLB style)."
    )
    num_layers: int = Field(..., gt=0, description="Decoder layers (the only stack of a decoder-only model).")
    num_encoder_layers: int = Field(0, ge=0, description="Encoder layers; 0 for decoder-only models.")
    hidden_size: int = Field(..., gt=0, description="Model width d_model (elements).")
    vocab_size: int = Field(..., gt=0, description="Vocabulary size (tokens).")
    tie_word_embeddings: bool = Field(False, description="Output head shares the input embedding matrix.")
    max_seq_len: int = Field(4096, gt=0, description="Context length the model was trained for (tokens).")

    # attention
    attention_type: Literal["gqa", "mla"] = Field(
        "gqa",
        description="`gqa` (multi-head / grouped-query attention) or `mla` (DeepSeek multi-head latent attention).",
    )
    num_attention_heads: int = Field(..., gt=0, description="Query heads per layer.")
    num_key_value_heads: Optional[int] = Field(
        None, gt=0, description="Key/value heads (GQA); defaults to `num_attention_heads` (plain MHA)."
    )
    head_dim: Optional[int] = Field(
        None, gt=0, description="Per-head size; defaults to hidden_size / num_attention_heads."
    )
    q_lora_rank: Optional[int] = Field(
        None, gt=0, description="MLA: query compression rank (null = no query compression)."
    )
    kv_lora_rank: Optional[int] = Field(None, gt=0, description="MLA: key/value latent size (cached per token).")
    qk_nope_head_dim: Optional[int] = Field(None, gt=0, description="MLA: per-head query/key size without rotary part.")
    qk_rope_head_dim: Optional[int] = Field(None, gt=0, description="MLA: per-head decoupled rotary query/key size.")
    v_head_dim: Optional[int] = Field(None, gt=0, description="MLA: per-head value size.")
    attention_bias: bool = Field(False, description="Attention projections carry biases.")
    qk_norm: bool = Field(False, description="Per-head RMSNorm on queries and keys (OLMoE, Qwen3).")
    rotary: bool = Field(
        True,
        description="Rotary position embedding on queries and keys (RoPE; MLA: its decoupled rotary part); false for "
        "models with learned, sinusoidal or relative positions (T5's Switch, GShard, GLaM, NLLB).",
    )
    norm_type: Literal["rmsnorm", "layernorm"] = Field(
        "rmsnorm", description="`rmsnorm` (a weight per channel) or `layernorm` (weight and bias)."
    )
    attention_sinks: bool = Field(
        False, description="A learned sink logit per head in each layer's softmax (GPT-OSS): one parameter a head."
    )
    attention_window: Optional[int] = Field(
        None,
        gt=0,
        description="Local attention: a windowed layer's query sees at most this many keys (tokens); null = every "
        "layer attends to the whole context.",
    )
    attention_window_kind: Literal["sliding", "chunked"] = Field(
        "sliding",
        description="`sliding`: the last `attention_window` tokens (Mistral, GPT-OSS); `chunked`: the tokens of the "
        "query's own chunk of `attention_window` (Llama 4).",
    )
    full_attention_every: Optional[int] = Field(
        None,
        gt=0,
        description="With `attention_window`: every n-th layer (n-1, 2n-1, ...) attends to the whole context "
        "(GPT-OSS: 2, Llama 4: 4); null = every layer is windowed.",
    )

    # feed-forward
    intermediate_size: int = Field(..., gt=0, description="Hidden size of a dense (non-MoE) FFN layer (elements).")
    dense_ffn_activation: FfnActivation = Field("swiglu", description="Activation of dense FFN layers.")
    ffn_bias: bool = Field(False, description="FFN projections carry biases (NLLB).")

    # mixture of experts
    num_experts: int = Field(..., gt=0, description="Routed experts per MoE layer.")
    top_k: int = Field(..., gt=0, description="Routed experts each token is sent to.")
    moe_intermediate_size: int = Field(..., gt=0, description="Hidden size of one routed expert's FFN (elements).")
    expert_ffn_activation: FfnActivation = Field("swiglu", description="Activation of expert FFNs.")
    num_shared_experts: int = Field(0, ge=0, description="Always-active shared experts per MoE layer (DeepSeekMoE).")
    num_mtp_modules: int = Field(
        0, ge=0, description="Multi-token prediction modules (DeepSeek-V3: 1), which serve as speculative drafters."
    )
    shared_expert_intermediate_size: Optional[int] = Field(
        None, gt=0, description="Hidden size of one shared expert; defaults to `moe_intermediate_size`."
    )
    first_k_dense_layers: int = Field(
        0, ge=0, description="Leading layers that stay dense (DeepSeek `first_k_dense_replace`)."
    )
    moe_layer_frequency: int = Field(
        1,
        gt=0,
        description="Every n-th layer (after the dense ones) is MoE: 1 = all, 2 = every other (Switch, GShard, "
        "GLaM), 4 = NLLB.",
    )
    # the model's own router: the defaults of a scenario's `routing` section
    router_strategy: RoutingStrategy = Field(
        "top_k", description="The model's own routing rule, the default of `routing.strategy`."
    )
    router_score_function: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="How router logits become affinities (DeepSeek-V3 uses sigmoid)."
    )
    router_normalize_weights: bool = Field(
        False, description="Renormalise each token's top-k weights to sum to 1 (Hugging Face `norm_topk_prob`)."
    )
    router_group_score: Literal["max", "top2_sum"] = Field(
        "max", description="Score of an expert group in group-limited routing: its best expert (V2) or best two (V3)."
    )
    router_bias: bool = Field(
        False,
        description="Per-expert correction bias added to the scores for the choice only (DeepSeek-V3); "
        "only `bias_balanced` routing honours it.",
    )
    num_expert_groups: Optional[int] = Field(
        None, gt=0, description="Group-limited routing: experts split into this many groups (DeepSeek `n_group`)."
    )
    topk_groups: Optional[int] = Field(
        None, gt=0, description="Group-limited routing: groups a token may use (DeepSeek `topk_group`)."
    )
    routed_scaling_factor: float = Field(1.0, gt=0, description="Multiplier on routed-expert weights (DeepSeek).")
    import_notes: list[str] = Field(
        default_factory=list,
        description="What the Hugging Face import approximated, each with its size (filled by the import).",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> "ModelSpec":
        if self.top_k > self.num_experts:
            raise ValueError(
                f"top_k ({self.top_k}) is larger than num_experts ({self.num_experts}); set top_k <= num_experts"
            )
        if self.num_key_value_heads is not None and self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.attention_type == "mla":
            missing = [
                name
                for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"attention_type 'mla' needs {', '.join(missing)}; set them or use attention_type 'gqa'"
                )
        if (self.num_expert_groups is None) != (self.topk_groups is None):
            raise ValueError("set both num_expert_groups and topk_groups for group-limited routing, or neither")
        if self.num_expert_groups is not None and self.topk_groups is not None:
            if self.num_experts % self.num_expert_groups:
                raise ValueError(
                    f"num_experts ({self.num_experts}) must be divisible by num_expert_groups "
                    f"({self.num_expert_groups})"
                )
            if self.topk_groups > self.num_expert_groups:
                raise ValueError(
                    f"topk_groups ({self.topk_groups}) is larger than num_expert_groups ({self.num_expert_groups})"
                )
        if self.full_attention_every is not None and self.attention_window is None:
            raise ValueError("full_attention_every needs attention_window; set attention_window or drop it")
        if self.attention_window is not None and self.architecture != "decoder":
            raise ValueError("attention_window: local attention is modelled for decoder-only models; drop it")
        if self.first_k_dense_layers > self.num_layers:
            raise ValueError(
                f"first_k_dense_layers ({self.first_k_dense_layers}) exceeds num_layers ({self.num_layers})"
            )
        return self

    # Derived sizes used throughout the accounting (properties, so they are never stale).
    @property
    def kv_heads(self) -> int:
        """Key/value heads (equal to query heads for plain multi-head attention)."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        """Per-head size for GQA attention."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def shared_expert_size(self) -> int:
        """Hidden size of one shared expert."""
        return self.shared_expert_intermediate_size or self.moe_intermediate_size

    def is_windowed_layer(self, index: int) -> bool:
        """Whether decoder layer `index` (0-based) attends through the local window, not the whole context."""
        if self.attention_window is None:
            return False
        every = self.full_attention_every
        return every is None or (index + 1) % every != 0

    @property
    def num_windowed_layers(self) -> int:
        """Decoder layers that attend through the local window (`is_windowed_layer`)."""
        return sum(self.is_windowed_layer(index) for index in range(self.num_layers))

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` (0-based, within one stack) has an MoE FFN."""
        first = self.first_k_dense_layers
        return index >= first and (index - first + 1) % self.moe_layer_frequency == 0

    def moe_layers_in_stack(self, num_layers: int) -> int:
        """How many of a stack's `num_layers` layers are MoE layers."""
        return max(0, num_layers - self.first_k_dense_layers) // self.moe_layer_frequency

    @property
    def num_moe_layers(self) -> int:
        """MoE layers across all stacks."""
        stacks = [self.num_layers, self.num_encoder_layers]
        return sum(self.moe_layers_in_stack(layers) for layers in stacks)

    @property
    def num_dense_layers(self) -> int:
        """Dense-FFN layers across all stacks."""
        return self.num_layers + self.num_encoder_layers - self.num_moe_layers
