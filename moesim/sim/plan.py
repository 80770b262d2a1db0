"""`StagePlan`: which layers each pipeline stage holds, and what they weigh.

Layers (encoder first, then decoder) are split over `pp_size` stages as evenly as
possible, earlier stages taking the remainder (Megatron-Core's uneven split), or as
`parallelism.pipeline_layers` says; the first
stage also holds the embedding, the last the output head and, in training, the MTP modules (each a layer in the
split, `moesim.sim.mtp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.models import accounting
from moesim.routing.capacity import expert_capacity
from moesim.scenario import Scenario


@dataclass(frozen=True)
class Layer:
    """One transformer layer of the model."""

    index: int  # position in the stack
    is_moe: bool
    cross_attention: bool  # decoder layer of an encoder-decoder model
    mtp: bool = False  # the transformer block of a multi-token-prediction module (`moesim.sim.mtp`)


@dataclass(frozen=True)
class StagePlan:
    """Layers per pipeline stage and the sizes the timeline needs."""

    scenario: Scenario

    @cached_property
    def layers(self) -> list[Layer]:
        model = self.scenario.model
        encoder = [Layer(i, model.is_moe_layer(i), False) for i in range(model.num_encoder_layers)]
        cross = model.architecture == "encoder_decoder"
        decoder = [Layer(i, model.is_moe_layer(i), cross) for i in range(model.num_layers)]
        mtp = [Layer(model.num_layers + i, model.num_experts > 1, False, True) for i in range(self.mtp_modules)]
        return encoder + decoder + mtp

    @property
    def mtp_modules(self) -> int:
        """MTP modules a training step runs (after the last layer, on the last stage: `moesim.sim.mtp`)."""
        workload = self.scenario.workload
        train = workload.mode == "training" and workload.train_mtp and self.scenario.model.architecture == "decoder"
        return self.scenario.model.num_mtp_modules if train else 0

    @cached_property
    def stages(self) -> list[list[Layer]]:
        counts = self.scenario.parallelism.pipeline_layers
        if counts is None:
            splits = np.array_split(np.arange(len(self.layers)), self.scenario.parallelism.pp_size)
        else:  # the scenario's own split (checked to add up by the scenario)
            splits = np.split(np.arange(len(self.layers)), np.cumsum(counts)[:-1])
        return [[self.layers[i] for i in split] for split in splits]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimizer step per data-parallel rank."""
        workload, par = self.scenario.workload, self.scenario.parallelism
        return max(1, (workload.global_batch_size or 1) // (workload.micro_batch_size * (par.dp_size or 1)))

    def stage_layer_count(self, stage: int) -> int:
        return len(self.stages[stage])

    def stage_moe_layer_count(self, stage: int) -> int:
        return sum(layer.is_moe for layer in self.stages[stage])

    def stage_dense_params(self, stage: int) -> float:
        """Parameters of a stage that are not routed experts (sharded by TP, replicated over DP); an MTP module's
        entry (its projection and norms) with its block, the output head it shares counted once."""
        model = self.scenario.model
        total = 0.0
        for layer in self.stages[stage]:
            if layer.mtp:
                total += accounting.mtp_entry_params(model)
            total += accounting.attention_params(model) * (2 if layer.cross_attention else 1)
            total += accounting.norm_params(model, model.hidden_size) * (3 if layer.cross_attention else 2)
            if layer.is_moe:
                total += accounting.shared_expert_params(model) + accounting.router_params(model)
            else:
                total += accounting.dense_ffn_params(model)
        if stage == 0:
            total += accounting.embedding_params(model)
        if stage == self.num_stages - 1:
            total += accounting.output_head_params(model) + accounting.norm_params(model, model.hidden_size)
        return total

    def stage_expert_params(self, stage: int) -> float:
        """Routed-expert parameters of a stage, all experts (sharded by EP)."""
        model = self.scenario.model
        return self.stage_moe_layer_count(stage) * model.num_experts * accounting.expert_params(model)

    @property
    def tokens_per_rank(self) -> int:
        """Tokens one rank holds in a training micro-batch or prefill (after sequence/context split)."""
        workload, par = self.scenario.workload, self.scenario.parallelism
        return max(1, workload.micro_batch_size * workload.seq_len // (par.cp_size * par.tp_size))

    @property
    def prefill_chunks(self) -> int:
        """Inference: prefill iterations per batch (chunked prefill; 1 when the whole batch fits one chunk)."""
        workload, par = self.scenario.workload, self.scenario.parallelism
        if workload.mode != "inference" or workload.prefill_chunk_tokens is None:
            return 1
        chunk_per_rank = max(1, workload.prefill_chunk_tokens // (par.cp_size * par.tp_size))
        return -(-self.tokens_per_rank // chunk_per_rank)

    @property
    def prefill_tokens_per_rank(self) -> int:
        """Tokens one rank holds in one prefill iteration (the batch split into equal chunks)."""
        return -(-self.tokens_per_rank // self.prefill_chunks)

    @property
    def pass_tokens_per_rank(self) -> int:
        """Tokens one rank holds in its largest pass: a training micro-batch, or a prefill chunk (or the decode
        batch when that is larger)."""
        workload, par = self.scenario.workload, self.scenario.parallelism
        if workload.mode != "inference":
            return self.tokens_per_rank
        return max(
            self.prefill_tokens_per_rank, workload.micro_batch_size // par.tp_size if workload.decode_tokens else 1
        )

    @property
    def buffer_slots_per_rank(self) -> int:
        """Token slots a rank's all-to-all receive buffer holds: its experts' capacity (top_k x 2 when dropless)."""
        routing, par = self.scenario.routing, self.scenario.parallelism
        group_tokens = self.pass_tokens_per_rank * par.ep_size
        top_k = routing.top_k or self.scenario.model.top_k
        capacity = expert_capacity(group_tokens, self.scenario.model.num_experts, top_k, routing.capacity_factor)
        experts_per_rank = self.scenario.model.num_experts // par.ep_size
        if capacity is None:  # dropless: a buffer for twice the mean load
            return 2 * self.pass_tokens_per_rank * top_k
        return capacity * experts_per_rank


def attention_ranks_per_expert_group(scenario: Scenario) -> int:
    """Attention ranks (TP x CP groups of GPUs, each with its own requests) whose tokens meet in one expert group of
    `ep_size` x `expert_tp_size` GPUs when serving; 1 where the group is one attention rank or less (attention
    tensor parallel over the experts' GPUs: every GPU holds the same tokens, as TensorRT-LLM, SGLang and vLLM run
    TP attention with EP or TP experts)."""
    par = scenario.parallelism
    return max(1, par.ep_size * par.expert_tp_size // (par.tp_size * par.cp_size))


def expert_group_tokens(scenario: Scenario, tokens: int, tp_gathers: bool) -> int:
    """Distinct tokens routed over one expert group in a pass where a rank holds `tokens`: with `tp_gathers` (a
    sequence-parallel share on every GPU, training) each of the `ep_size` ranks holds its own; without (serving's
    attention ranks, `tokens` a TP group's, replicated on its GPUs) each attention rank of the group holds its own."""
    if tp_gathers:
        return tokens * scenario.parallelism.ep_size
    return tokens * attention_ranks_per_expert_group(scenario)
