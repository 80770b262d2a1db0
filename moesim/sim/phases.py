"""The phases of one micro-batch on one pipeline stage, with their durations per rank.

Per layer, forward (Megatron-Core's split for MoE layers):
attention -> [tp all-reduce] -> router -> permute -> dispatch -> experts (+ shared
experts, overlapping the dispatch when enabled) -> combine -> unpermute; dense layers
run a dense FFN instead of router ... unpermute. Backward runs the layers in reverse:
GEMMs cost their input and weight gradients as the profile's kernel models cost them
(`CostModel.gemm_backward_seconds`; 2x the forward on a datasheet GPU), the experts'
grouped GEMMs likewise, attention scores 2.5x the FLOPs at FlashAttention's measured backward rate,
memory-bound kernels twice, each all-to-all once more; a profile with a measured MoE
backward model (`phase_fit['backward']`) costs that block from it instead; full
recomputation replays the forward first. `gemm: fp8` runs the linear layers' GEMMs in fp8.
Compute phases carry one duration per rank (only the experts' follow each rank's expert
loads); collectives their network time, every rank waiting for the slowest to arrive.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from moesim.cluster.deepep_kernels import DEFAULT_SMS
from moesim.cluster.topology import Topology
from moesim.cost.model import ATTENTION_BLOCK, CostModel, causal_tile_share
from moesim.cost.phase_features import PhaseWork, router_fit_key
from moesim.models import accounting
from moesim.models.spec import GATED_ACTIVATIONS
from moesim.scenario import Scenario
from moesim.sim.collectives import all_reduce_time, all_to_all, local_share, low_latency_all_to_all
from moesim.sim.engine_kernels import engine_allreduce, engine_decode_attention
from moesim.sim.fp8_casts import cast_phases
from moesim.sim.moe_block import moe_block_phases
from moesim.sim.mtp import entry_phases, output_head_phases
from moesim.sim.norms import head_norm_seconds, layer_norm_seconds, rotary_seconds
from moesim.sim.phase import (
    BACKWARD_ATTENTION_FACTOR,
    BACKWARD_MEMORY_FACTOR,
    Phase,
    StageProgram,
    backward_order,
    mean_seconds,
    measured_or,
    moe_work,
    relabel,
)
from moesim.sim.plan import Layer, StagePlan, attention_ranks_per_expert_group
from moesim.sim.recompute import replayed_phases
from moesim.sim.routing_load import LayerRouting

EXECUTOR_OFFSET_KERNELS = 2
"""Kernels of the executor's experts phase beyond its grouped GEMMs and activation: the groups' offsets, a cumulative
sum and a cast (`validation/NVIDIA-H100-80GB-HBM3/kernel_counts.json`: nine kernels in the phase)."""


class PhaseBuilder:
    """Turns a stage's layers, its routing and the cost model into phases."""

    def __init__(
        self,
        scenario: Scenario,
        plan: StagePlan,
        cost: CostModel,
        topology: Topology,
        tokens: int,
        context: int,
        decode: bool = False,
        tp_gathers: bool = True,
    ):
        self.scenario, self.plan, self.cost, self.topology = scenario, plan, cost, topology
        self.model = scenario.model
        self.tokens = tokens  # tokens per rank in this micro-batch (or decode step)
        self.context = context  # attention context length
        self.decode = decode
        self.ranks = scenario.parallelism.ep_size
        self.tp = scenario.parallelism.tp_size
        self.etp = scenario.parallelism.expert_tp_size
        self.expert_inner = self.model.moe_intermediate_size // self.etp  # each expert's FFN share on a GPU
        # The tokens a TP group's attention, dense-FFN and output-head GEMMs run, each GPU on its 1/TP of the widths
        # and heads: with `tp_gathers` the rank holds its sequence-parallel share (1/TP of the group's tokens, as
        # Megatron-Core splits them for the norms, the router and the experts) and the group gathers them all
        # first; without, `tokens` already are the group's (serving's attention ranks).
        self.gemm_tokens = tokens * self.tp if tp_gathers else tokens
        # Likewise the experts' rows with expert tensor parallelism: each GPU of an ETP group runs every row the
        # group received (gathered after the dispatch) on its 1/ETP of each expert's FFN
        self.expert_row_gather = self.etp if tp_gathers else 1
        # The tokens this GPU routes out and lays out by expert: its own share, or (serving's TP attention ranks,
        # the tokens replicated on the group's GPUs) 1/TP of the group's, as an engine's fused MoE selects each
        # GPU's rows from the replicated tokens
        self.routed_tokens = float(tokens) if tp_gathers else tokens / self.tp
        # Serving with TP attention: two all-reduces a layer (after attention, after the FFN or MoE). Where every GPU
        # of the expert group holds the tokens, the engines move none: each GPU picks its experts' rows, the second
        # all-reduce sums the partial outputs (vLLM's, SGLang's fused MoE under TP; TensorRT-LLM without ADP)
        self.serving_tp = not tp_gathers and self.tp > 1
        self.experts_local = self.serving_tp and attention_ranks_per_expert_group(scenario) == 1
        precision = scenario.workload.precision
        self.element = precision.activation_bytes
        self.fp8 = precision.gemm == "fp8"  # linear layers' GEMMs; the router and output head stay bf16
        self.expert_weight_bytes = precision.expert_weight_bytes if precision.expert_weights else None  # 4-bit
        self.fused_kernels = scenario.simulation.moe_kernels == "fused"
        self.fused_router = (scenario.simulation.router_kernels or scenario.simulation.moe_kernels) == "fused"
        hidden = self.model.hidden_size
        self.combine_scale = precision.token_bytes(hidden, "combine") / precision.token_bytes(hidden, "dispatch")
        self._alltoall_cache: dict[int, tuple] = {}
        self._layer_cache: dict[tuple, tuple[list[Phase], list[Phase]]] = {}

    def alltoalls(self, index: int, routing: LayerRouting) -> tuple:
        """(dispatch, combine) transfer results of a routed layer, computed once per distinct layer."""
        sim = self.scenario.simulation
        if index not in self._alltoall_cache and sim.alltoall_algorithm == "deepep_low_latency":
            copies_in = np.array([rows.sum() for rows in routing.rank_rows])  # every routed copy, as received
            copies_out = np.full(self.ranks, copies_in.sum() / self.ranks)  # tokens start evenly on the ranks
            token = self.scenario.workload.precision.token_bytes(self.model.hidden_size, "dispatch")
            local, combine = local_share(self.topology, routing.traffic), token * self.combine_scale
            self._alltoall_cache[index] = (
                low_latency_all_to_all(self.topology, copies_in, copies_out, token, local),
                low_latency_all_to_all(self.topology, copies_out, copies_in, combine, local, "combine"),
            )
        if index not in self._alltoall_cache:
            pair, sms = (routing.traffic, routing.traffic.transposed(self.combine_scale)), sim.comm_sms or DEFAULT_SMS
            self._alltoall_cache[index] = tuple(
                all_to_all(self.topology, traffic, sim.alltoall_algorithm, sim.network_mode, sms) for traffic in pair
            )
        return self._alltoall_cache[index]

    def same(self, seconds: float) -> np.ndarray:
        return np.full(self.ranks, float(seconds))

    # ------------------------------------------------------------ per-layer pieces
    def attention_parts(self, layer: Layer) -> dict[str, float]:
        """A layer's attention forward, part by part (seconds): `projections` (GEMMs, of which `up_projections` are
        MLA's latent-to-head ones), `scores` (the fused attention kernel; decode: at least its KV-cache read) and
        `norms` (the layer's norms and residual adds), `head_norms` (the ones inside its attention) and `rope` (the
        rotary embedding, training), from `moesim.sim.norms`."""
        model, cost = self.model, self.cost
        projections = accounting.attention_params(model) * (2 if layer.cross_attention else 1) / self.tp
        cols = max(1, int(projections // model.hidden_size))
        heads_per_rank = max(1, model.num_attention_heads // self.tp)
        up = 0.0
        if model.attention_type == "mla":  # the latent-to-head (up) projections
            qk_dim = model.qk_nope_head_dim + model.qk_rope_head_dim  # type: ignore[operator]
            if model.q_lora_rank:
                up += float(
                    cost.gemm_seconds(self.gemm_tokens, model.q_lora_rank, heads_per_rank * qk_dim, fp8=self.fp8)
                )
            value = model.qk_nope_head_dim + model.v_head_dim  # type: ignore[operator]
            up += float(cost.gemm_seconds(self.gemm_tokens, model.kv_lora_rank, heads_per_rank * value, fp8=self.fp8))

        def gemm_of(inner: int, width: int) -> float:
            return float(cost.gemm_seconds(self.gemm_tokens, max(1, inner), max(1, width), fp8=self.fp8))

        if layer.cross_attention:  # as one GEMM of all the projections' columns
            gemm = gemm_of(model.hidden_size, cols)
        elif model.attention_type == "mla":  # each projection its own GEMM: query (or its latent), the KV latent
            # with the rotary key, the up projections, the output
            query = model.q_lora_rank or heads_per_rank * qk_dim
            latent = model.kv_lora_rank + model.qk_rope_head_dim  # type: ignore[operator]
            output = gemm_of(heads_per_rank * model.v_head_dim, model.hidden_size)  # type: ignore[operator]
            gemm = gemm_of(model.hidden_size, query) + gemm_of(model.hidden_size, latent) + up + output
        else:  # the fused QKV projection, then the output projection: two GEMMs, each reading its own weights
            q_width = model.num_attention_heads * model.attention_head_dim // self.tp
            qkv_width = q_width + 2 * model.kv_heads * model.attention_head_dim // self.tp
            gemm = gemm_of(model.hidden_size, qkv_width) + gemm_of(q_width, model.hidden_size)
        # A prompt's causal mask runs its diagonal tiles whole; each 128 queries of a head are a block of their own
        share = 1.0 if self.decode else causal_tile_share(self.context)
        # MLA decodes in its absorbed form (scores over the 576-wide latent), prefill in the expanded one
        keys, cached_keys = self._attended_keys(share)
        score_flops = accounting.score_flops_per_key(model, absorbed=self.decode) * keys * self.gemm_tokens / self.tp
        blocks = 0.0 if self.decode else heads_per_rank * math.ceil(self.gemm_tokens / ATTENTION_BLOCK)
        scores = cost.attention_seconds(score_flops, blocks)
        kv_bytes = accounting.kv_cache_bytes_per_token(model, self.scenario.workload.precision) / model.num_layers
        kv_bytes *= accounting.kv_share_per_tp_rank(model, self.tp)  # a TP rank's heads' share; MLA's latent: all
        if self.decode:  # decode reads the KV cache its window holds (the whole context without one) per new token
            scores = max(scores, cost.memory_seconds(kv_bytes * cached_keys * self.gemm_tokens))
        if self.scenario.workload.mode == "inference":  # the new tokens' keys and values into the KV cache (engines
            # fuse it with the rotary embedding): read and written once
            scores += cost.memory_seconds(2 * kv_bytes * self.gemm_tokens)
        measured = engine_decode_attention(self, heads_per_rank, cached_keys) if self.decode else None
        if measured is not None:  # the engine's own kernel, measured (its cache append included)
            scores = measured
        norms = layer_norm_seconds(self)
        backward_gemm = float(cost.gemm_backward_seconds(self.gemm_tokens, model.hidden_size, cols, fp8=self.fp8))
        return {
            "projections": gemm,
            "up_projections": min(up, gemm),
            "scores": scores,
            # FlashAttention's backward: 2.5x the forward's FLOPs at its own, lower, measured rate
            "scores_backward": BACKWARD_ATTENTION_FACTOR * scores * cost.attention_backward_slowdown(self.context),
            "norms": norms,
            "head_norms": head_norm_seconds(self, heads_per_rank),
            "rope": rotary_seconds(self, heads_per_rank),
            "projections_backward": backward_gemm,
        }

    def _attended_keys(self, share: float) -> tuple[float, float]:
        """Keys a query attends in a layer, the mean over the model's layers, and the cached keys a decode query
        reads: the context (x `share`, the causal tiles a prompt runs) in whole-context layers, the window's keys in
        windowed ones (`accounting.windowed_keys`); an encoder-decoder's cross and encoder attention see the whole
        source."""
        model, context = self.model, self.context
        if model.architecture == "encoder_decoder":
            layers = model.num_layers + model.num_encoder_layers
            mean = accounting.attention_score_flops_per_token(model, 2 * context) / layers
            keys = mean / accounting.score_flops_per_key(model)
            return keys * share, float(context)
        windowed = model.num_windowed_layers
        whole = model.num_layers - windowed
        local = accounting.windowed_keys(model, context, self.decode) if windowed else 0.0
        cached = accounting.windowed_keys(model, context, decode=True) if windowed else 0.0
        keys = (whole * context * share + windowed * local) / model.num_layers
        return keys, (whole * context + windowed * cached) / model.num_layers

    def attention(self, layer: Layer) -> tuple[float, float]:
        """(forward, backward) seconds of a layer's attention: projections, scores, norms (twice backward), RoPE."""
        parts = self.attention_parts(layer)
        return (
            parts["projections"] + parts["scores"] + parts["norms"] + parts["head_norms"] + parts["rope"],
            parts["projections_backward"]
            + parts["scores_backward"]
            + BACKWARD_MEMORY_FACTOR * (parts["norms"] + parts["head_norms"])
            + parts["rope"],
        )

    def ffn_seconds(self, rows: np.ndarray | float, inner: int, activation: str) -> np.ndarray:
        """Time of FFN(s) with `rows` tokens (see `CostModel.ffn_seconds`)."""
        return self.cost.ffn_seconds(
            rows, self.model.hidden_size, inner, activation in GATED_ACTIVATIONS, self.element, self.fp8
        )

    def ffn_backward_seconds(self, rows: np.ndarray | float, inner: int, activation: str) -> np.ndarray:
        """Their backward (see `CostModel.ffn_backward_seconds`)."""
        return self.cost.ffn_backward_seconds(
            rows, self.model.hidden_size, inner, activation in GATED_ACTIVATIONS, self.element, self.fp8
        )

    def work(self, top_k: int, served: Optional[float] = None, **extra: Any) -> PhaseWork:
        """This rank's work in one MoE layer (see `moe_work`)."""
        routing = self.scenario.routing
        extra.setdefault("recording", self.scenario.workload.mode == "training")
        return moe_work(
            routing.strategy or "top_k",
            routing.capacity_factor,
            self.tokens,
            self.model.hidden_size,
            self.model.num_experts,
            top_k,
            served,
            routing.pad_to_capacity,
            **extra,
        )

    def experts_seconds(self, rank_rows: np.ndarray, top_k: int) -> float:
        """One rank's experts phase: its experts' FFNs (one grouped GEMM per projection where the profile models it),
        or the calibrated model of the phase built on them."""
        model = self.model
        arithmetic = self.cost.experts_ffn_seconds(
            rank_rows * self.expert_row_gather,
            model.hidden_size,
            self.expert_inner,
            model.expert_ffn_activation in GATED_ACTIVATIONS,
            self.element,
            self.fp8,
            self.fused_kernels,
            self.expert_weight_bytes,
        )
        if self.fused_kernels:  # an engine's kernels, not the executor's measured bookkeeping
            return arithmetic
        work = self.work(
            top_k, active_experts=int(np.count_nonzero(rank_rows)), rows=float(rank_rows.sum()), ffn_seconds=arithmetic
        )
        offsets = EXECUTOR_OFFSET_KERNELS * self.cost.kernel_launch_s
        return measured_or(self.cost.fitted("experts", work), arithmetic + offsets)

    def experts_backward_seconds(self, rank_rows: np.ndarray) -> float:
        """One rank's experts backward (input and weight gradients) from the cost model."""
        model = self.model
        return self.cost.experts_ffn_backward_seconds(
            rank_rows * self.expert_row_gather,
            model.hidden_size,
            self.expert_inner,
            model.expert_ffn_activation in GATED_ACTIVATIONS,
            self.element,
            self.fp8,
        )

    def router_fit(self, work: PhaseWork) -> Optional[float]:
        """The router's measured model: the rule's own, else (a rule the profile did not calibrate) top-k's."""
        rule = self.scenario.routing
        measured = self.cost.fitted(router_fit_key(rule.strategy or "top_k", rule.capacity_factor), work)
        return (
            measured if measured is not None else self.cost.fitted(router_fit_key("top_k", rule.capacity_factor), work)
        )

    def tp_allreduce(self) -> float:
        if self.tp == 1:
            return 0.0
        group = np.arange(self.tp)
        size = self.gemm_tokens * self.model.hidden_size * self.element
        measured = engine_allreduce(self, size)  # a serving engine's own kernels, measured
        if measured is not None:
            return measured
        # Megatron's reduce-scatter and all-gather of the whole sequence's activations move what an all-reduce does
        return all_reduce_time(self.topology, group, size, "ring")

    def etp_gather(self, rows: float) -> float:
        """Expert tensor parallelism: the all-gather of a rank's dispatched rows over its ETP group (after the
        dispatch; the reduce-scatter before the combine takes as long): NCCL's measured all-gather inside a node,
        else half a ring all-reduce of the rows."""
        size, measured = rows * self.model.hidden_size * self.element, self.topology.collectives
        if self.etp == 1 or size <= 0:
            return 0.0
        if measured is not None and self.etp <= self.topology.gpus_per_node:  # nccl-tests' size: the whole output
            return measured.seconds("all_gather", self.etp, size * self.etp, self.topology.scale_up_bytes_per_s)
        return all_reduce_time(self.topology, np.arange(self.etp), size, "ring") / 2

    # ------------------------------------------------------------ programs
    def layer_phases(
        self, layer: Layer, routing: list[LayerRouting], routing_index: Optional[int]
    ) -> tuple[list[Phase], list[Phase]]:
        """A layer's forward and backward phases (backward in forward order). Layers alike (dense or routed as
        the same routed layer, with or without cross-attention) cost the same: computed once, relabelled."""
        key = (layer.is_moe, layer.cross_attention, routing_index, layer.mtp)
        if key not in self._layer_cache:
            self._layer_cache[key] = self._layer_phases(
                Layer(-1, layer.is_moe, layer.cross_attention, layer.mtp), routing, routing_index
            )
        forward, backward = self._layer_cache[key]
        return relabel(forward, layer.index), relabel(backward, layer.index)

    def _layer_phases(
        self, layer: Layer, routing: list[LayerRouting], routing_index: Optional[int]
    ) -> tuple[list[Phase], list[Phase]]:
        model = self.model
        entry = entry_phases(self, layer.index) if layer.mtp else None  # an MTP module's (`moesim.sim.mtp`)
        layer_forward: list[Phase] = [entry[0]] if entry else []
        layer_backward: list[Phase] = [entry[1]] if entry else []
        attention, attention_backward = self.attention(layer)
        layer_forward.append(Phase("attention", layer.index, self.same(attention)))
        layer_backward.append(Phase("attention", layer.index, self.same(attention_backward)))
        casts = cast_phases(self, layer, routing[routing_index].rank_rows if routing_index is not None else None)
        if casts:  # FP8 training: the casts around the layer's GEMMs (`moesim.sim.fp8_casts`)
            layer_forward.append(casts[0])
            layer_backward.append(casts[1])
        tp_reduce = self.tp_allreduce()
        if tp_reduce:
            layer_forward.append(Phase("tp_allreduce", layer.index, np.array([tp_reduce]), collective=True))
            layer_backward.append(Phase("tp_allreduce", layer.index, np.array([tp_reduce]), collective=True))
        if not layer.is_moe:
            inner = model.intermediate_size // self.tp
            dense = float(self.ffn_seconds(self.gemm_tokens, inner, model.dense_ffn_activation))
            dense_backward = float(self.ffn_backward_seconds(self.gemm_tokens, inner, model.dense_ffn_activation))
            layer_forward.append(Phase("dense_ffn", layer.index, self.same(dense)))
            layer_backward.append(Phase("dense_ffn", layer.index, self.same(dense_backward)))
        else:
            assert routing_index is not None
            block_forward, block_backward = moe_block_phases(self, layer, routing[routing_index], routing_index)
            layer_forward += block_forward
            layer_backward += block_backward
        if tp_reduce and (self.serving_tp or not layer.is_moe):  # a dense FFN's (or served MoE's) row-parallel output
            layer_forward.append(Phase("tp_allreduce", layer.index, np.array([tp_reduce]), collective=True))
            layer_backward += [] if self.serving_tp else [layer_forward[-1]]  # (SP: its reduce-scatter, all-gather)
        return layer_forward, layer_backward

    def replayed(self, layer: Layer, layer_forward: list[Phase]) -> list[Phase]:
        """What the layer's backward recomputes first (`moesim.sim.recompute`)."""
        return replayed_phases(self, layer, layer_forward)

    def stage_program(self, stage: int, routing: list[LayerRouting], first_moe_layer: int) -> StageProgram:
        """Phases of `stage`; its n-th MoE layer is model MoE layer first_moe_layer + n, routed as routing[that %
        len]."""
        model, cost = self.model, self.cost
        forward: list[Phase] = []
        backward: list[Phase] = []
        moe_layer = first_moe_layer
        replayed = 0.0
        if stage == 0:
            embed = cost.memory_seconds(2 * self.tokens * model.hidden_size * self.element)
            forward.append(Phase("embedding", -1, self.same(embed)))
            backward.append(Phase("embedding", -1, self.same(BACKWARD_MEMORY_FACTOR * embed)))
        for layer in self.plan.stages[stage]:
            routing_index = None
            if layer.is_moe:
                routing_index = moe_layer % len(routing)
                moe_layer += 1
            layer_forward, layer_backward = self.layer_phases(layer, routing, routing_index)
            forward += layer_forward
            # later layers' backward runs first: prepend; recomputation replays (part of) the forward first
            replay = self.replayed(layer, layer_forward)
            replayed += sum(mean_seconds(phase) for phase in replay)
            backward[:0] = replay + backward_order(layer_backward)
        if stage == self.plan.num_stages - 1:  # the output head, once for the model and once an MTP module
            for _ in range(1 + self.plan.mtp_modules):
                head, head_backward = output_head_phases(self)
                forward.append(head)
                backward.insert(0, head_backward)
        return StageProgram(forward, backward, replayed)
