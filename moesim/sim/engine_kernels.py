"""A serving engine's own kernels where the scenario names the engine (`serving.engine`): its TP all-reduce and its
decode attention as aiconfigurator measured them (`moesim.cost.engine_tables`), in place of moesim's models of
those kernels. Decode-only iterations run as the engines run them, replayed from CUDA graphs; iterations that
prefill launch eagerly. Where the tables lack the GPU, the group size or the head layout, moesim's own model
stands (None here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from moesim.cost.engine_tables import allreduce_seconds, decode_attention_seconds

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder

MLA_LATENT_WIDTH = 576
"""MLA decodes over its latent cache: 512 + 64 (the rotary part) wide, one 'KV head'."""


def engine_allreduce(builder: "PhaseBuilder", size_bytes: float) -> Optional[float]:
    """The engine's all-reduce of `size_bytes` over the TP group inside a node, in a CUDA graph when the pass
    only decodes; None without an engine or a table."""
    serving = builder.scenario.serving
    if not serving.engine or builder.tp > builder.topology.gpus_per_node:
        return None
    gpu = builder.scenario.cluster.gpu.name
    return allreduce_seconds(gpu, serving.engine, serving.engine_version, builder.tp, size_bytes, builder.decode)


def engine_decode_attention(builder: "PhaseBuilder", heads_per_rank: int, cached_keys: float) -> Optional[float]:
    """The engine's decode-attention kernel for this GPU's heads and the rank's decode tokens, each reading
    `cached_keys` cached tokens (its cache append included); None without an engine or a table."""
    serving, model = builder.scenario.serving, builder.model
    if not serving.engine:
        return None
    mla = model.attention_type == "mla"
    return decode_attention_seconds(
        builder.scenario.cluster.gpu.name,
        serving.engine,
        serving.engine_version,
        "mla" if mla else "gqa",
        heads_per_rank,
        1 if mla else max(1, model.kv_heads // builder.tp),
        MLA_LATENT_WIDTH if mla else model.attention_head_dim,
        builder.gemm_tokens,
        cached_keys,
    )
