"""The phases of one MoE block, forward and backward, in Megatron-Core's order: router, permute, dispatch (shared
experts under it), experts, combine, unpermute; each from the calibrated phase model where the profile has one,
else from the kernel models (GEMMs, grouped GEMMs, memory passes) and the network model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from moesim.sim.phase import (
    BACKWARD_MEMORY_FACTOR,
    BACKWARD_SHUFFLE_FACTOR,
    Phase,
    measured_or,
)

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import Layer
    from moesim.sim.routing_load import LayerRouting


LOW_LATENCY_KERNEL_FIXED_S = 55e-6
"""SM time of one DeepEP low-latency dispatch or combine, send and receive phases together, beyond its memory
traffic: SGLang's unit test of DeepEP's low-latency dispatch at 128 tokens a rank (H100, EP 72) holds the SMs
about 0.06 ms (lmsys.org, 'Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism',
2025-05-05), of which its bytes take ~5 us at HBM speed; the combine is assumed to cost the same. The time is
synchronisation (flags, counters, one grid per phase), so it does not scale with the GPU."""


def low_latency_kernel_seconds(builder: "PhaseBuilder", served: float, top_k: int) -> tuple[float, float]:
    """SM time of DeepEP's low-latency dispatch and combine on one rank (the messages in flight are the network's,
    in the dispatch and combine phases): the dispatch's send casts and packs each token, its receive writes the
    `served` arrived copies into the experts' layout (so no separate permutation); the combine's send packs the
    expert outputs, its receive reduces each token's `top_k` copies (so no separate un-permutation). Each: the
    fixed cost plus its bytes at HBM bandwidth."""
    model, cost = builder.model, builder.cost
    precision = builder.scenario.workload.precision
    hidden, element = model.hidden_size, builder.element
    sent, returned = precision.token_bytes(hidden, "dispatch"), precision.token_bytes(hidden, "combine")
    tokens = builder.routed_tokens
    dispatch_bytes = tokens * (hidden * element + sent) + 2 * served * sent
    combine_bytes = served * (hidden * element + returned) + tokens * (top_k * returned + hidden * element)
    fixed = LOW_LATENCY_KERNEL_FIXED_S
    return fixed + cost.memory_seconds(dispatch_bytes), fixed + cost.memory_seconds(combine_bytes)


def moe_block_phases(
    builder: "PhaseBuilder", layer: "Layer", routing_here: "LayerRouting", routing_index: int
) -> tuple[list[Phase], list[Phase]]:
    """The block's forward phases and its backward phases (in forward order)."""
    model, cost, sim = builder.model, builder.cost, builder.scenario.simulation
    top_k = builder.scenario.routing.top_k or model.top_k
    layer_forward: list[Phase] = []
    layer_backward: list[Phase] = []
    router_gemm = float(cost.gemm_seconds(builder.tokens, model.hidden_size, model.num_experts))
    scores_pass = cost.memory_seconds(3 * 4 * builder.tokens * model.num_experts)
    router = router_gemm + scores_pass
    router_roofline_backward = (
        float(cost.gemm_backward_seconds(builder.tokens, model.hidden_size, model.num_experts))
        + BACKWARD_MEMORY_FACTOR * scores_pass
    )
    served = float(sum(rank_rows.sum() for rank_rows in routing_here.rank_rows)) / builder.ranks
    if sim.alltoall_algorithm == "deepep_low_latency":  # DeepEP's kernels lay the copies out by expert
        permute, unpermute = low_latency_kernel_seconds(builder, served, top_k)
    else:
        permuted_rows = served if builder.scenario.routing.pad_to_capacity else builder.routed_tokens * top_k
        permute_bytes = 2 * permuted_rows * model.hidden_size * builder.element
        permute = unpermute = cost.memory_seconds(permute_bytes)  # fused kernels: one pass over what they move
        if not builder.fused_kernels:  # the eager executor's measured phase models, where the profile has them
            permute = measured_or(cost.fitted("permute", builder.work(top_k, served)), permute)
            unpermute = measured_or(cost.fitted("unpermute", builder.work(top_k, served)), unpermute)
    if not builder.fused_router:  # the router is the executor's whichever all-to-all runs
        router = measured_or(builder.router_fit(builder.work(top_k, router_gemm_seconds=router_gemm)), router)
    rows = routing_here.rank_rows
    gemm = np.array([builder.experts_seconds(rank_rows, top_k) for rank_rows in rows])  # ranks, not tokens
    shared = shared_roofline_backward = 0.0
    if model.num_shared_experts:
        shared_inner = model.shared_expert_size * model.num_shared_experts
        # split by TP like a dense FFN (Megatron-Core's SharedExpertMLP; the engines' TP shared experts)
        shared_inner //= builder.tp
        shared = float(builder.ffn_seconds(builder.gemm_tokens, shared_inner, model.expert_ffn_activation))
        shared_roofline_backward = float(
            builder.ffn_backward_seconds(builder.gemm_tokens, shared_inner, model.expert_ffn_activation)
        )
        shared = measured_or(cost.fitted("shared_experts", builder.work(top_k, ffn_seconds=shared)), shared)
    dispatch, combine = builder.alltoalls(routing_index, routing_here)
    etp = builder.etp_gather(served)  # expert tensor parallelism: the gather after the dispatch, the scatter
    # before the combine
    # before the tokens, ranks exchange how many they will send per expert (one small all-to-all)
    count_exchange = dispatch.latency_seconds

    def transfer(name: str, result: Any, extra: float = 0.0, overlapped: Optional[Phase] = None) -> Phase:
        """A dispatch or combine phase: the all-to-all (`extra` seconds before it) and the ETP gather/scatter."""
        return Phase(
            name,
            layer.index,
            np.array([result.seconds + extra + etp]),
            collective=True,
            overlapped=overlapped,
            chunks=sim.moe_chunks,
            bytes_across_nodes=result.bytes_across_nodes,
            detail={"latency": result.latency_seconds + extra},
        )

    shared_phase = Phase("shared_experts", layer.index, builder.same(shared)) if shared else None
    local = builder.experts_local  # the tokens already on every GPU: no dispatch, no combine (`PhaseBuilder`)
    overlapped = shared_phase if (shared_phase and sim.overlap_shared_experts and not local) else None
    layer_forward += [
        Phase("router", layer.index, builder.same(router)),
        Phase("permute", layer.index, builder.same(permute)),
    ]
    if not local:
        layer_forward.append(transfer("dispatch", dispatch, count_exchange, overlapped))
    if shared_phase and not overlapped:
        layer_forward.append(shared_phase)
    layer_forward.append(Phase("experts", layer.index, gemm, chunks=sim.moe_chunks))
    if not local:
        layer_forward.append(transfer("combine", combine))
    layer_forward.append(Phase("unpermute", layer.index, builder.same(unpermute)))
    # backward: a calibrated MoE-block model (grouped-GEMM backward of the experts, the other phases
    # relative to their forward), else the fixed ratios
    fit = cost.coefficients("backward")
    if fit is not None:  # DEVICE_PHASE_FEATURES["backward"]; a feature a sparse fit left out counts 0
        experts_factor, shuffle_factor, other_factor, fixed = (
            fit.get(name, 0.0)
            for name in (
                "experts backward seconds",
                "permute and unpermute forward seconds",
                "router and shared forward seconds",
                "1",
            )
        )
        gemm_backward = np.array(
            [experts_factor * builder.experts_backward_seconds(rank_rows) + fixed for rank_rows in rows]
        )
        router_backward, permute_backward, unpermute_backward, shared_back = (
            other_factor * router,
            shuffle_factor * permute,
            shuffle_factor * unpermute,
            other_factor * shared,
        )
    elif cost.dense is None and cost.grouped is None:  # an efficiency curve only: the backward ratio
        gemm_backward = cost.backward_gemm_factor * gemm
        router_backward, permute_backward, unpermute_backward, shared_back = (
            cost.backward_gemm_factor * router,
            BACKWARD_MEMORY_FACTOR * permute,
            BACKWARD_MEMORY_FACTOR * unpermute,
            cost.backward_gemm_factor * shared,
        )
    else:  # the kernel models' backward: gradient GEMMs as measured; the permutation's backward is a
        # scatter of the rows it gathered and the un-permutation's a gather of the rows it scattered
        gemm_backward = np.array([builder.experts_backward_seconds(rank_rows) for rank_rows in rows])
        router_backward, permute_backward, unpermute_backward, shared_back = (
            router_roofline_backward,
            BACKWARD_SHUFFLE_FACTOR * permute,
            BACKWARD_SHUFFLE_FACTOR * unpermute,
            shared_roofline_backward,
        )
    shared_backward = Phase("shared_experts", layer.index, builder.same(shared_back)) if shared else None
    layer_backward += [
        Phase("router", layer.index, builder.same(router_backward)),
        Phase("permute", layer.index, builder.same(permute_backward)),
        transfer("dispatch", dispatch, overlapped=shared_backward if sim.overlap_shared_experts else None),
        Phase("experts", layer.index, gemm_backward, chunks=sim.moe_chunks),
        transfer("combine", combine),
        Phase("unpermute", layer.index, builder.same(unpermute_backward)),
    ]
    if shared_backward and not sim.overlap_shared_experts:
        layer_backward.append(shared_backward)
    return layer_forward, layer_backward
