"""The families a Hugging Face `config.json` import maps, one function each: the config's keys as `ModelSpec` fields,
and notes of what each approximates (`moesim.models.hf_import` reads the file and builds the spec)."""

from __future__ import annotations

from typing import Any, Callable

from moesim.errors import ScenarioError


class ModelImportError(ScenarioError):
    """A config.json that cannot be read or mapped; the message names the key and the fix."""


FAMILIES = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "olmoe",
    "dbrx",
    "gpt_oss",
    "llama4",
    "minimax_m2",
    "kimi_k2",
)
"""`model_type` values the import maps (`llama4_text` is read as `llama4`)."""


class Reader:
    """Typed look-ups into one config, each failure naming the key."""

    def __init__(self, config: dict[str, Any], family: str) -> None:
        self.config, self.family = config, family

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def int(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            if value is None:
                raise ModelImportError(f"model: config.json ({self.family}) lacks '{key}'; add it (a whole number)")
            raise ModelImportError(f"model: config.json '{key}' is {value!r}; expected a positive whole number")
        return value

    def optional_int(self, key: str) -> int | None:
        return self.int(key) if self.has(key) else None

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.config.get(key, default)
        if value is None:
            return default
        if not isinstance(value, (bool, int)):
            raise ModelImportError(f"model: config.json '{key}' is {value!r}; expected true or false")
        return bool(value)

    def text(self, key: str, default: str) -> str:
        value = self.config.get(key, default)
        return default if value is None else str(value)

    def sub(self, key: str) -> "Reader":
        value = self.config.get(key) or {}
        if not isinstance(value, dict):
            raise ModelImportError(f"model: config.json '{key}' is {value!r}; expected a mapping")
        return Reader(value, f"{self.family} {key}")

    def refuse_unless(self, key: str, allowed: Callable[[Any], bool], why: str) -> None:
        if self.has(key) and not allowed(self.config[key]):
            raise ModelImportError(f"model: config.json '{key}' = {self.config[key]!r}: {why}")


Fields = tuple[dict[str, Any], list[str]]


LLAMA_NAMES = ("num_hidden_layers", "hidden_size", "max_position_embeddings", "num_attention_heads")
"""The keys most families name the layers, width, context and heads by (Llama's)."""


def _common(reader: Reader, names: tuple[str, str, str, str] = LLAMA_NAMES) -> dict[str, Any]:
    """The keys every family has, under its `names` for layers, width, context and heads."""
    activation = reader.text("hidden_act", "silu")
    if activation not in ("silu", "swish"):
        raise ModelImportError(
            f"model: config.json 'hidden_act' = '{activation}': the families mapped use SiLU-gated FFNs; "
            "write the model's fields out with its ffn activation"
        )
    layers, hidden, context, heads = names
    fields: dict[str, Any] = dict(
        num_layers=reader.int(layers),
        hidden_size=reader.int(hidden),
        vocab_size=reader.int("vocab_size"),
        max_seq_len=reader.int(context, 4096),
        num_attention_heads=reader.int(heads),
        tie_word_embeddings=reader.flag("tie_word_embeddings"),
    )
    if reader.has("num_key_value_heads"):
        fields["num_key_value_heads"] = reader.int("num_key_value_heads")
    if reader.has("head_dim"):
        fields["head_dim"] = reader.int("head_dim")
    return fields


def _sliding_window_all_layers(reader: Reader, fields: dict[str, Any]) -> None:
    """Mistral's and Qwen's `sliding_window`, which binds only where the family turns it on."""
    on = reader.flag("use_sliding_window", default=reader.family == "mixtral")
    if on and reader.has("sliding_window"):
        window = reader.int("sliding_window")
        if window < fields["max_seq_len"]:
            fields["attention_window"] = window
        if reader.has("max_window_layers") and reader.int("max_window_layers") < fields["num_layers"]:
            raise ModelImportError(
                "model: config.json 'max_window_layers' below num_hidden_layers: windowed lower layers only are not "
                "modelled; set use_sliding_window false or write the model out"
            )


def _local_experts(reader: Reader) -> dict[str, Any]:
    """Mixtral's naming of a routed MoE in every layer: `num_local_experts` of `intermediate_size` each."""
    inner = reader.int("intermediate_size")
    return dict(
        intermediate_size=inner,
        moe_intermediate_size=inner,
        num_experts=reader.int("num_local_experts"),
        top_k=reader.int("num_experts_per_tok"),
    )


def _mixtral(reader: Reader) -> Fields:
    fields = _common(reader)
    _sliding_window_all_layers(reader, fields)
    fields.update(
        _local_experts(reader),
        router_normalize_weights=True,  # transformers' MixtralSparseMoeBlock: softmax, top-k, divided by their sum
    )
    return fields, []


def _moe_layer_placement(reader: Reader, fields: dict[str, Any]) -> None:
    """Qwen's `decoder_sparse_step` and `mlp_only_layers` as moesim's dense-first / every-n-th placement."""
    step = reader.int("decoder_sparse_step", 1)
    dense = reader.config.get("mlp_only_layers") or []
    if not isinstance(dense, list) or not all(isinstance(index, int) for index in dense):
        raise ModelImportError(f"model: config.json 'mlp_only_layers' = {dense!r}; expected a list of layer numbers")
    if dense and (sorted(dense) != list(range(len(dense))) or step != 1):
        raise ModelImportError(
            f"model: config.json 'mlp_only_layers' = {dense}: moesim places dense layers first or every n-th; "
            "write the model out with first_k_dense_layers / moe_layer_frequency"
        )
    fields.update(moe_layer_frequency=step, first_k_dense_layers=len(dense))


def _qwen_moe(reader: Reader) -> Fields:
    fields = _common(reader)
    _sliding_window_all_layers(reader, fields)
    _moe_layer_placement(reader, fields)
    notes: list[str] = []
    fields.update(
        intermediate_size=reader.int("intermediate_size"),
        moe_intermediate_size=reader.int("moe_intermediate_size"),
        num_experts=reader.int("num_experts"),
        top_k=reader.int("num_experts_per_tok"),
        router_normalize_weights=reader.flag("norm_topk_prob"),
    )
    if reader.family == "qwen3_moe":
        fields.update(qk_norm=True, attention_bias=reader.flag("attention_bias"))
    else:  # Qwen2-MoE: q, k and v carry biases (not o); one shared expert behind a sigmoid gate
        fields["attention_bias"] = True
        hidden, layers = fields["hidden_size"], fields["num_layers"]
        notes.append(
            f"o_proj counted with a bias Qwen2-MoE does not have: +{hidden:,} parameters a layer, "
            f"+{hidden * layers:,} in all"
        )
        if reader.has("shared_expert_intermediate_size"):
            shared = reader.int("shared_expert_intermediate_size")
            fields.update(num_shared_experts=1, shared_expert_intermediate_size=shared)
            notes.append(
                f"the shared expert's sigmoid gate (hidden_size x 1) is not counted: -{hidden * layers:,} parameters"
            )
    return fields, notes


def _deepseek(reader: Reader) -> Fields:
    fields = _common(reader)
    fields.pop("num_key_value_heads", None)  # MLA: every head has its own up-projected keys and values
    fields.pop("head_dim", None)
    reader.refuse_unless("moe_layer_freq", lambda value: value == 1, "only every layer after the dense ones is mapped")
    method = reader.text("topk_method", "greedy")
    strategies = {"greedy": "top_k", "group_limited_greedy": "group_limited", "noaux_tc": "bias_balanced"}
    if method not in strategies:
        raise ModelImportError(f"model: config.json 'topk_method' = '{method}'; moesim maps {', '.join(strategies)}")
    fields.update(
        attention_type="mla",
        q_lora_rank=reader.optional_int("q_lora_rank"),
        kv_lora_rank=reader.int("kv_lora_rank"),
        qk_nope_head_dim=reader.int("qk_nope_head_dim"),
        qk_rope_head_dim=reader.int("qk_rope_head_dim"),
        v_head_dim=reader.int("v_head_dim"),
        attention_bias=reader.flag("attention_bias"),
        intermediate_size=reader.int("intermediate_size"),
        moe_intermediate_size=reader.int("moe_intermediate_size"),
        num_experts=reader.int("n_routed_experts"),
        num_shared_experts=reader.config.get("n_shared_experts") or 0,
        top_k=reader.int("num_experts_per_tok"),
        first_k_dense_layers=reader.config.get("first_k_dense_replace") or 0,
        routed_scaling_factor=float(reader.config.get("routed_scaling_factor") or 1.0),
        router_normalize_weights=reader.flag("norm_topk_prob"),
        router_score_function=reader.text("scoring_func", "softmax"),
        router_strategy=strategies[method],
        num_mtp_modules=reader.config.get("num_nextn_predict_layers") or 0,
    )
    if method != "greedy":
        fields.update(num_expert_groups=reader.int("n_group"), topk_groups=reader.int("topk_group"))
        fields["router_group_score"] = "top2_sum" if method == "noaux_tc" else "max"
    fields["router_bias"] = method == "noaux_tc"  # e_score_correction_bias, one a routed expert
    return fields, []


def _olmoe(reader: Reader) -> Fields:
    fields = _common(reader)
    inner = reader.int("intermediate_size")
    fields.update(
        qk_norm=True,
        attention_bias=reader.flag("attention_bias"),
        intermediate_size=inner,
        moe_intermediate_size=inner,
        num_experts=reader.int("num_experts"),
        top_k=reader.int("num_experts_per_tok"),
        router_normalize_weights=reader.flag("norm_topk_prob"),
    )
    return fields, []


def _dbrx(reader: Reader) -> Fields:
    attention, ffn = reader.sub("attn_config"), reader.sub("ffn_config")
    inner = ffn.int("ffn_hidden_size")
    weights = ffn.config.get("moe_normalize_expert_weights", 1)
    fields = _common(reader, ("n_layers", "d_model", "max_seq_len", "n_heads"))
    fields.update(
        num_key_value_heads=attention.int("kv_n_heads"),
        intermediate_size=inner,
        moe_intermediate_size=inner,
        num_experts=ffn.int("moe_num_experts"),
        top_k=ffn.int("moe_top_k"),
        router_normalize_weights=weights is not None,  # divided by their L1 norm (p = 1)
    )
    return fields, []


def _layer_pattern(reader: Reader, key: str, is_full: Callable[[Any], bool], every: int, layers: int) -> None:
    """Check a per-layer list (GPT-OSS `layer_types`, Llama 4 `no_rope_layers`) follows 'every n-th layer full'."""
    pattern = reader.config.get(key)
    if not pattern:
        return
    expected = [(index + 1) % every == 0 for index in range(layers)]
    if not isinstance(pattern, list) or [is_full(value) for value in pattern] != expected:
        raise ModelImportError(
            f"model: config.json '{key}' is not 'every {every}th layer attends to the whole context'; "
            "moesim maps that pattern only; write the model out with attention_window / full_attention_every"
        )


def _gpt_oss(reader: Reader) -> Fields:
    fields = _common(reader)
    layers = fields["num_layers"]
    _layer_pattern(reader, "layer_types", lambda kind: kind == "full_attention", 2, layers)
    experts = reader.int("num_local_experts") if reader.has("num_local_experts") else reader.int("num_experts")
    inner = reader.int("intermediate_size")
    fields.update(
        attention_bias=reader.flag("attention_bias", True),
        attention_sinks=True,
        attention_window=reader.int("sliding_window"),
        attention_window_kind="sliding",
        full_attention_every=2,
        intermediate_size=inner,
        moe_intermediate_size=inner,
        ffn_bias=True,  # gate_up_proj_bias and down_proj_bias
        num_experts=experts,
        top_k=reader.int("num_experts_per_tok" if reader.has("num_experts_per_tok") else "experts_per_token"),
        router_normalize_weights=True,  # a softmax over the top-k logits
    )
    notes = [
        f"the router's bias (one a routed expert) is not counted: -{experts * layers:,} parameters",
        "the clamped SwiGLU (swiglu_limit) is priced as a plain SwiGLU (element-wise, no FLOPs counted)",
    ]
    return fields, notes + _quantization_note(reader)


def _llama4(reader: Reader) -> Fields:
    fields = _common(reader)
    layers = fields["num_layers"]
    step = reader.int("interleave_moe_layer_step", 1)
    moe_layers = reader.config.get("moe_layers")
    if moe_layers and moe_layers != list(range(step - 1, layers, step)):
        raise ModelImportError(
            f"model: config.json 'moe_layers' is not every {step} layer(s) from layer {step - 1}; write the model out "
            "with moe_layer_frequency"
        )
    every = reader.int("no_rope_layer_interval", 4)
    _layer_pattern(reader, "no_rope_layers", lambda rope: rope == 0, every, layers)
    inner = reader.int("intermediate_size")
    fields.update(
        intermediate_size=reader.int("intermediate_size_mlp", inner),
        moe_intermediate_size=inner,
        shared_expert_intermediate_size=inner,
        num_shared_experts=1,
        moe_layer_frequency=step,
        num_experts=reader.int("num_local_experts"),
        top_k=reader.int("num_experts_per_tok"),
        router_score_function="sigmoid",
        attention_bias=reader.flag("attention_bias"),
    )
    if reader.has("attention_chunk_size"):
        chunk = reader.int("attention_chunk_size")
        fields.update(attention_window=chunk, attention_window_kind="chunked", full_attention_every=every)
    notes = []
    if reader.flag("use_qk_norm"):
        notes.append("the L2 norm of queries and keys has no weights: priced as element-wise work, no FLOPs counted")
    return fields, notes + _quantization_note(reader)


def _minimax_m2(reader: Reader) -> Fields:
    """MiniMax-M2 (`MiniMaxM2ForCausalLM`): grouped-query attention wider than the model (48 heads of 128 on a
    3,072-wide stream) with a norm over all the queries' and all the keys' features, a routed MoE in every layer
    without a shared expert, sigmoid scores with a per-expert correction bias for the choice (DeepSeek-V3's rule,
    no groups), the chosen weights renormalised, and multi-token-prediction modules."""
    fields = _common(reader)
    reader.refuse_unless(
        "shared_intermediate_size", lambda value: not value, "a shared expert beside the routed ones is not mapped"
    )
    bias = reader.flag("use_routing_bias")
    fields.update(
        _local_experts(reader),
        qk_norm=reader.flag("use_qk_norm"),
        router_score_function=reader.text("scoring_func", "softmax"),
        router_normalize_weights=True,  # MiniMaxM2SparseMoeBlock: the top-k weights divided by their sum
        router_bias=bias,
        router_strategy="bias_balanced" if bias else "top_k",
        num_mtp_modules=reader.config.get("num_mtp_modules") or 0 if reader.flag("use_mtp") else 0,
    )
    notes = []
    if reader.text("qk_norm_type", "per_head") == "per_layer":
        heads, kv = fields["num_attention_heads"], fields.get("num_key_value_heads", fields["num_attention_heads"])
        width = reader.int("head_dim")
        notes.append(
            f"its query and key norms span the layer's {heads * width:,} and {kv * width:,} features, not a head's "
            f"{width}: +{(heads + kv - 2) * width * fields['num_layers']:,} norm weights uncounted"
        )
    return fields, notes + _quantization_note(reader)


def _with_quantization_note(mapped: Fields, reader: Reader) -> Fields:
    fields, notes = mapped
    return fields, notes + _quantization_note(reader)


def _quantization_note(reader: Reader) -> list[str]:
    method = reader.sub("quantization_config").config.get("quant_method")
    if not method:
        return []
    return [
        f"the checkpoint's weights are quantised ({method}); moesim prices the precision the scenario sets "
        "(workload.precision), not the checkpoint's"
    ]


MAPPERS: dict[str, Callable[[Reader], Fields]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "olmoe": _olmoe,
    "dbrx": _dbrx,
    "gpt_oss": _gpt_oss,
    "llama4": _llama4,
    "minimax_m2": _minimax_m2,
    "kimi_k2": lambda reader: _with_quantization_note(_deepseek(reader), reader),  # Kimi-K2 and K2.5's text
    # model: DeepseekV3ForCausalLM, 384 experts in one group
}
