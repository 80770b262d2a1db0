"""Architectures of published MoE models, each field as published, with its source.

A preset is a plain `ModelSpec`; scenarios refer to it by name and may override any
field (`model: {preset: mixtral-8x7b, top_k: 1}`). `PUBLISHED` holds the parameter
counts the authors announced, so tests can check the accounting against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim.errors import UnknownPresetError, unknown_name_message
from moesim.models.spec import ModelSpec

_PRESETS: dict[str, dict[str, Any]] = {
    # Mistral AI, huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    "mixtral-8x7b": dict(
        num_layers=32,
        hidden_size=4096,
        vocab_size=32000,
        max_seq_len=32768,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=14336,
        moe_intermediate_size=14336,
        num_experts=8,
        top_k=2,
        router_normalize_weights=True,  # transformers' MixtralSparseMoeBlock: softmax, top-2, divide by the sum
        source="huggingface.co/mistralai/Mixtral-8x7B-v0.1 config.json",
    ),
    # Mistral AI, huggingface.co/mistralai/Mixtral-8x22B-v0.1/blob/main/config.json
    "mixtral-8x22b": dict(
        num_layers=56,
        hidden_size=6144,
        vocab_size=32768,
        max_seq_len=65536,
        num_attention_heads=48,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=16384,
        moe_intermediate_size=16384,
        num_experts=8,
        top_k=2,
        router_normalize_weights=True,  # as Mixtral 8x7B
        source="huggingface.co/mistralai/Mixtral-8x22B-v0.1 config.json",
    ),
    # Fedus et al. 2021 (Switch Transformers) on T5-Base; huggingface.co/google/switch-base-8 config.json
    # (d_model 768, d_ff 3072, 12+12 layers, 12 heads x 64, sparse every other layer, ReLU, tied embeddings).
    "switch-base-8": dict(
        rotary=False,  # T5's relative position bias (Raffel et al. 2020), not RoPE
        architecture="encoder_decoder",
        num_layers=12,
        num_encoder_layers=12,
        hidden_size=768,
        vocab_size=32128,
        tie_word_embeddings=True,
        max_seq_len=512,
        num_attention_heads=12,
        head_dim=64,
        intermediate_size=3072,
        dense_ffn_activation="relu",
        moe_intermediate_size=3072,
        expert_ffn_activation="relu",
        num_experts=8,
        top_k=1,
        moe_layer_frequency=2,
        source="huggingface.co/google/switch-base-8 config.json; Fedus et al. 2021",
    ),
    # Fedus et al. 2021, Table 9 (Switch-C): d_model 2080, d_ff 6144, 32 heads x 64, 15+15 layers,
    # every layer sparse, 2048 experts; huggingface.co/google/switch-c-2048 config.json.
    "switch-c-2048": dict(
        rotary=False,  # T5's relative position bias, not RoPE
        architecture="encoder_decoder",
        num_layers=15,
        num_encoder_layers=15,
        hidden_size=2080,
        vocab_size=32128,
        tie_word_embeddings=True,
        max_seq_len=512,
        num_attention_heads=32,
        head_dim=64,
        intermediate_size=6144,
        dense_ffn_activation="relu",
        moe_intermediate_size=6144,
        expert_ffn_activation="relu",
        num_experts=2048,
        top_k=1,
        moe_layer_frequency=1,
        source="Fedus et al. 2021, Table 9; huggingface.co/google/switch-c-2048 config.json",
    ),
    # Lepikhin et al. 2020 (GShard), section 3 and Table 3, MoE(2048E, 36L): M=1024, H=8192,
    # 16 heads, MoE every other layer in encoder and decoder, top-2, 32K wordpiece vocabulary.
    "gshard-600b": dict(
        rotary=False,  # the Transformer's sinusoidal positions (Lepikhin et al. 2020 predates RoPE)
        architecture="encoder_decoder",
        num_layers=18,
        num_encoder_layers=18,
        hidden_size=1024,
        vocab_size=32000,
        tie_word_embeddings=True,
        max_seq_len=1024,
        num_attention_heads=16,
        norm_type="layernorm",
        intermediate_size=8192,
        dense_ffn_activation="relu",
        moe_intermediate_size=8192,
        expert_ffn_activation="relu",
        num_experts=2048,
        top_k=2,
        moe_layer_frequency=2,
        router_strategy="gshard_top2",
        source="Lepikhin et al. 2020 (GShard), Table 3, MoE(2048E, 36L)",
    ),
    # Du et al. 2022 (GLaM), Table 4, GLaM (64B/64E): L=64, M=8192, H=32768, 128 heads x 128, E=64,
    # every other layer MoE, top-2; gated GELU in the dense FFNs (section 4), 256K SentencePiece vocab.
    "glam-1.2t": dict(
        rotary=False,  # per-layer relative positional bias (Du et al. 2022)
        num_layers=64,
        hidden_size=8192,
        vocab_size=256000,
        tie_word_embeddings=True,
        max_seq_len=1024,
        num_attention_heads=128,
        head_dim=128,
        intermediate_size=32768,
        dense_ffn_activation="geglu",
        moe_intermediate_size=32768,
        expert_ffn_activation="gelu",
        num_experts=64,
        top_k=2,
        moe_layer_frequency=2,
        router_strategy="gshard_top2",  # GLaM uses GShard's top-2 gating
        source="Du et al. 2022 (GLaM), Table 4 and section 4",
    ),
    # DeepSeek-AI 2024, huggingface.co/deepseek-ai/DeepSeek-V2/blob/main/config.json
    "deepseek-v2": dict(
        num_layers=60,
        hidden_size=5120,
        vocab_size=102400,
        max_seq_len=163840,
        attention_type="mla",
        num_attention_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        intermediate_size=12288,
        moe_intermediate_size=1536,
        num_experts=160,
        num_shared_experts=2,
        top_k=6,
        first_k_dense_layers=1,
        num_expert_groups=8,
        topk_groups=3,
        routed_scaling_factor=16.0,
        # scoring_func softmax, topk_method group_limited_greedy (group score: best expert), norm_topk_prob false
        router_strategy="group_limited",
        router_group_score="max",
        router_normalize_weights=False,
        source="huggingface.co/deepseek-ai/DeepSeek-V2 config.json",
    ),
    # DeepSeek-AI 2024, huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (main model; the
    # multi-token-prediction module, 14B more, is not part of the 671B).
    "deepseek-v3": dict(
        num_mtp_modules=1,  # num_nextn_predict_layers: 1 (one MTP module, report section 2.2)
        num_layers=61,
        hidden_size=7168,
        vocab_size=129280,
        max_seq_len=163840,
        attention_type="mla",
        num_attention_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_experts=256,
        num_shared_experts=1,
        top_k=8,
        first_k_dense_layers=3,
        num_expert_groups=8,
        topk_groups=4,
        routed_scaling_factor=2.5,
        # scoring_func sigmoid, topk_method noaux_tc (e_score_correction_bias, group score: best two),
        # norm_topk_prob true
        router_score_function="sigmoid",
        router_bias=True,
        router_strategy="bias_balanced",
        router_group_score="top2_sum",
        router_normalize_weights=True,
        source="huggingface.co/deepseek-ai/DeepSeek-V3 config.json",
    ),
    # Databricks 2024, huggingface.co/databricks/dbrx-base/blob/main/config.json
    # (d_model 6144, 40 layers, 48 heads, 8 KV heads, ffn_hidden_size 10752, 16 experts, top-4).
    "dbrx": dict(
        num_layers=40,
        hidden_size=6144,
        vocab_size=100352,
        max_seq_len=32768,
        num_attention_heads=48,
        num_key_value_heads=8,
        intermediate_size=10752,
        moe_intermediate_size=10752,
        num_experts=16,
        top_k=4,
        router_normalize_weights=True,  # ffn_config moe_normalize_expert_weights 1: top-4 weights / their L1 norm
        source="huggingface.co/databricks/dbrx-base config.json",
    ),
    # NLLB Team 2022, huggingface.co/facebook/nllb-moe-54b/blob/main/config.json
    # (d_model 2048, 24+24 layers, 16 heads, ffn 8192, 128 experts, sparse every 4th layer).
    "nllb-moe-54b": dict(
        rotary=False,  # fairseq's sinusoidal position embeddings
        architecture="encoder_decoder",
        num_layers=24,
        num_encoder_layers=24,
        hidden_size=2048,
        vocab_size=256206,
        tie_word_embeddings=True,
        max_seq_len=1024,
        num_attention_heads=16,
        attention_bias=True,
        norm_type="layernorm",
        ffn_bias=True,
        intermediate_size=8192,
        dense_ffn_activation="relu",
        moe_intermediate_size=8192,
        expert_ffn_activation="relu",
        num_experts=128,
        top_k=2,
        moe_layer_frequency=4,
        source="huggingface.co/facebook/nllb-moe-54b config.json",
    ),
    # Muennighoff et al. 2024, huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/config.json
    "olmoe-1b-7b": dict(
        num_layers=16,
        hidden_size=2048,
        vocab_size=50304,
        max_seq_len=4096,
        num_attention_heads=16,
        qk_norm=True,
        intermediate_size=1024,
        moe_intermediate_size=1024,
        num_experts=64,
        top_k=8,
        router_normalize_weights=False,  # norm_topk_prob false
        source="huggingface.co/allenai/OLMoE-1B-7B-0924 config.json",
    ),
    # Qwen Team 2025, huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json
    "qwen3-30b-a3b": dict(
        num_layers=48,
        hidden_size=2048,
        vocab_size=151936,
        max_seq_len=40960,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        qk_norm=True,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        top_k=8,
        router_normalize_weights=True,  # norm_topk_prob true
        source="huggingface.co/Qwen/Qwen3-30B-A3B config.json",
    ),
    # Qwen Team 2025, huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json (models/hf/qwen3-235b-a22b.json)
    "qwen3-235b-a22b": dict(
        num_layers=94,
        hidden_size=4096,
        vocab_size=151936,
        max_seq_len=40960,
        num_attention_heads=64,
        num_key_value_heads=4,
        head_dim=128,
        qk_norm=True,
        intermediate_size=12288,
        moe_intermediate_size=1536,
        num_experts=128,
        top_k=8,
        router_normalize_weights=True,  # norm_topk_prob true
        source="huggingface.co/Qwen/Qwen3-235B-A22B config.json",
    ),
    # A model small enough to run anywhere in tests and on a laptop CPU.
    "tiny-moe": dict(
        num_layers=2,
        hidden_size=64,
        vocab_size=256,
        max_seq_len=65536,  # a context long enough for any test layer
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=8,
        top_k=2,
        source="moesim test model",
    ),
}


@dataclass(frozen=True)
class PublishedCounts:
    """Parameter counts as the authors announced them.

    `significant_digits` is how precisely the figure was printed ("37B" has 2), so a
    check can allow for the authors' rounding. `active_counts_input_embedding` records
    the publisher's convention for active parameters.
    """

    total_params: float
    active_params: float | None
    significant_digits: int
    active_counts_input_embedding: bool
    source: str


PUBLISHED: dict[str, PublishedCounts] = {
    "mixtral-8x7b": PublishedCounts(46.7e9, 12.9e9, 3, True, "Mistral AI, 'Mixtral of experts' (Dec 2023)"),
    "mixtral-8x22b": PublishedCounts(
        141e9, 39e9, 2, True, "Mistral AI, 'Cheaper, Better, Faster, Stronger' (Apr 2024)"
    ),
    "switch-c-2048": PublishedCounts(1571e9, None, 4, True, "Fedus et al. 2021, Table 9"),
    "gshard-600b": PublishedCounts(600e9, None, 3, True, "Lepikhin et al. 2020, Table 3"),
    "glam-1.2t": PublishedCounts(1.2e12, 96.6e9, 2, True, "Du et al. 2022, Tables 1 and 4"),
    "deepseek-v2": PublishedCounts(236e9, 21e9, 2, False, "DeepSeek-V2 technical report, abstract"),
    "deepseek-v3": PublishedCounts(671e9, 37e9, 2, False, "DeepSeek-V3 technical report, abstract"),
    "dbrx": PublishedCounts(132e9, 36e9, 2, False, "Databricks, 'Introducing DBRX' (Mar 2024)"),
    "nllb-moe-54b": PublishedCounts(54.5e9, None, 3, True, "NLLB Team 2022, 'No Language Left Behind'"),
    "olmoe-1b-7b": PublishedCounts(6.9e9, 1.3e9, 2, True, "Muennighoff et al. 2024 (OLMoE), abstract"),
    "qwen3-30b-a3b": PublishedCounts(30.5e9, 3.3e9, 2, True, "Qwen3 model card (huggingface.co/Qwen/Qwen3-30B-A3B)"),
    "qwen3-235b-a22b": PublishedCounts(235e9, 22e9, 2, True, "Qwen3 technical report (arXiv 2505.09388), Table 2"),
}


def model_preset_names() -> list[str]:
    """Names of all model presets, in a stable order."""
    return list(_PRESETS)


def model_preset(name: str, **overrides: Any) -> ModelSpec:
    """The `ModelSpec` of preset `name`, with any fields overridden."""
    key = name.strip().lower()
    if key not in _PRESETS:
        raise UnknownPresetError(unknown_name_message("model preset", name, model_preset_names()))
    fields = {"name": key, **_PRESETS[key], **overrides}
    return ModelSpec(**fields)
