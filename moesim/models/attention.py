"""The attention's own work: score FLOPs per query and key, and the keys a query attends, whole-context or through
a local window (sliding or chunked), in a prompt or in decode. `moesim.models.accounting` re-exports these."""

from __future__ import annotations

import math

from moesim.models.spec import ModelSpec


def score_flops_per_key(spec: ModelSpec, absorbed: bool = False) -> float:
    """FLOPs of Q·K^T and softmax·V for one query against one key in one layer, all heads.

    MLA decodes with its up-projections absorbed (DeepSeek-V2 paper 2.1.2; FlashMLA, SGLang, vLLM): every head
    scores the cached latent and rotary key (kv_lora_rank + qk_rope_head_dim) and sums the latent
    (kv_lora_rank), `absorbed`; prefill expands the latent into per-head keys and values first.
    """
    if spec.attention_type == "mla" and absorbed:
        qk_dim = spec.kv_lora_rank + spec.qk_rope_head_dim  # type: ignore[operator]
        v_dim = spec.kv_lora_rank
    elif spec.attention_type == "mla":
        qk_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim  # type: ignore[operator]
        v_dim = spec.v_head_dim
    else:
        qk_dim = v_dim = spec.attention_head_dim
    return 2.0 * spec.num_attention_heads * (qk_dim + v_dim)  # type: ignore[operator]


def windowed_keys(spec: ModelSpec, context: float, decode: bool) -> float:
    """Keys a query of a windowed layer attends, on average: in decode the query at position `context`; in a
    prompt of `context` tokens under a causal mask, the mean over its queries (continuous forms, as the
    whole-context layers' context / 2). Sliding window w: min(context, w) keys in decode, w - w^2 / (2 context)
    in a prompt longer than w; chunked (chunk c): the query's own chunk so far, c / 2 in decode past the first
    chunk, (q c^2 + r^2) / (2 context) in a prompt of q whole chunks and r more tokens."""
    window = spec.attention_window
    if window is None or context <= window:
        return context if decode else context / 2.0
    if spec.attention_window_kind == "sliding":
        return float(window) if decode else window - window * window / (2.0 * context)
    if decode:
        return window / 2.0
    whole, rest = divmod(context, window)
    return (whole * window * window + rest * rest) / (2.0 * context)


def decoder_attended_keys(spec: ModelSpec, context: float, decode: bool) -> float:
    """Keys a query attends, summed over the decoder's layers (see `windowed_keys`); whole-context layers
    attend `context` keys in decode and `context / 2` on average in a causal prompt."""
    windowed = spec.num_windowed_layers
    whole = spec.num_layers - windowed
    full_keys = context if decode else context / 2.0
    return whole * full_keys + (windowed * windowed_keys(spec, context, decode) if windowed else 0.0)


def attention_score_flops_per_token(
    spec: ModelSpec, seq_len: int, causal: bool = True, absorbed: bool = False
) -> float:
    """FLOPs of Q·K^T and softmax·V per token of a `seq_len` sequence, all layers (grows with the sequence;
    see `score_flops_per_key` for `absorbed`, `windowed_keys` for local attention)."""
    per_key = score_flops_per_key(spec, absorbed)
    if spec.architecture == "encoder_decoder":
        # encoder self-attention sees the whole source; decoder: causal self + full cross
        self_context = 0.5 if causal else 1.0
        return per_key * seq_len * (spec.num_encoder_layers + spec.num_layers * (self_context + 1.0))
    if not causal:  # every query sees the whole sequence, or at most its window
        windowed = spec.num_windowed_layers
        window = min(seq_len, spec.attention_window or seq_len)
        return per_key * ((spec.num_layers - windowed) * seq_len + windowed * window)
    return per_key * decoder_attended_keys(spec, seq_len, decode=False)


def kv_share_per_tp_rank(spec: ModelSpec, tp: int) -> float:
    """The share of a token's KV cache one of `tp` attention ranks holds (and reads in decode). GQA splits its key
    and value heads over the ranks, each rank holding ceil(kv_heads / tp) of them (heads replicated where there
    are fewer than ranks); MLA caches one latent and rotary key a token that every head reads (DeepSeek-V2, section
    2.1), so every rank holds all of it (SGLang's data-parallel attention exists because tensor parallelism
    duplicates this cache)."""
    if spec.attention_type == "mla" or tp <= 1:
        return 1.0
    heads = spec.kv_heads
    return math.ceil(heads / tp) / heads
