"""What one engine iteration costs: a batch of prefill-chunk tokens and decode tokens on one attention rank.

Each rank of the deployment runs attention on its own requests (data-parallel attention) and the ranks meet in
the experts' all-to-alls, as SGLang, TensorRT-LLM and vLLM serve large MoEs ("DEP"); with tensor parallelism an
attention rank is `tp_size` GPUs. An iteration of T tokens per rank costs the simulator's forward pass at T tokens
without its attention, plus the attention of its prefill tokens at their prompt's context and of its decode tokens
reading their KV caches. The pass without attention is simulated at token counts on a grid of powers of two and
interpolated between them.

With pipeline parallelism (`pp_size` stages) an engine keeps `pp_size` batches in flight, one per stage, as vLLM's
virtual engines and SGLang's pipeline micro-batches do: each is an engine of its own whose iteration passes every
stage in turn (the stages' times and the activations' hops between them) and, with all of them busy, waits for the
slowest stage to serve the others: max(sum of stages + hops, pp x slowest stage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.models import accounting
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.inference import InferencePass, expert_group_document


def iteration_cost_key(scenario: Scenario) -> str:
    """What an `IterationCost` depends on: the scenario less its labels, its node count (an EP group's ranks and
    links are the same in any cluster that holds it; with pipeline stages the node count stays, as it decides
    whether the stages' hops cross the network) and its serving settings other than the five an iteration reads
    (token budget, two-batch overlap, draft tokens, engine and its version). Deployments with the same key share
    one `IterationCost`."""
    serving = scenario.serving
    document = expert_group_document(scenario, keep_nodes=scenario.parallelism.pp_size > 1, leave_out=("serving",))
    read = [
        serving.token_budget,
        serving.two_batch_overlap,
        serving.speculative_tokens,
        serving.engine,
        serving.engine_version,
    ]
    return json.dumps([document, read], sort_keys=True)


def _sampled_rows(prefill_tokens: int, decode_tokens: int, sampled: int | None) -> int:
    """Rows the output head runs on: as given, else every decode token and one prompt where any prefills."""
    return decode_tokens + (1 if prefill_tokens else 0) if sampled is None else sampled


@dataclass
class IterationCost:
    """Seconds of one iteration on one attention rank, from the scenario's simulator."""

    scenario: Scenario
    _grid: list[int] = field(default_factory=list)
    _passes: dict[bool, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """(compute, collectives) seconds by pipeline stage and grid point, keyed by decode-only (iterations that only
    decode run DeepEP's low-latency kernels where the scenario runs DeepEP), for interpolating every iteration."""
    _attention_cache: dict[tuple[int, int, bool, int], float] = field(default_factory=dict)
    _head_cache: dict[int, float] = field(default_factory=dict)
    _draft_head_cache: dict[int, float] = field(default_factory=dict)
    """The output head's seconds by rows: the iteration's (its GEMM and logits pass) and a draft step's (GEMM)."""
    _draft_layers: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """A decode pass's body on the grid (overlapped with two-batch overlap): what a draft step's layer shares."""

    def __post_init__(self) -> None:
        document = self.scenario.model_dump(mode="json")
        # the pass is the simulator's inference pass over `tokens` tokens per rank (one chunk of that many)
        self._base = scenario_from_dict(document, ["workload.prefill_chunk_tokens=null", "workload.decode_tokens=0"])
        self.forward = InferencePass(self._base)
        # layers alike in attention (cross-attention or not) cost the same: one of each, and how many, per stage
        self._stage_kinds: list[dict[bool, tuple[Any, int]]] = []
        for stage in self.plan.stages:
            kinds: dict[bool, tuple[Any, int]] = {}
            for layer in stage:
                first, count = kinds.get(layer.cross_attention, (layer, 0))
                kinds[layer.cross_attention] = (first, count + 1)
            self._stage_kinds.append(kinds)
        self.stages = len(self._stage_kinds)
        self._stage_layers = [len(stage) for stage in self.plan.stages]
        # DeepEP's two modes, as DeepSeek and SGLang run them: the normal kernels while an iteration prefills, the
        # low-latency kernels for iterations that only decode
        self.two_modes = self._base.simulation.alltoall_algorithm == "deepep"
        self._decode_base = (
            scenario_from_dict(self._base.model_dump(mode="json"), ["simulation.alltoall_algorithm=deepep_low_latency"])
            if self.two_modes
            else self._base
        )

    @property
    def plan(self) -> Any:
        """The pass's stage plan (`InferencePass.plan`)."""
        return self.forward.plan

    @property
    def cost(self) -> Any:
        """The pass's kernel cost model (`InferencePass.cost`)."""
        return self.forward.cost

    def _pass_without_attention(
        self, tokens: int, scenario: Scenario | None = None, decode: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The forward pass at `tokens` tokens per rank without its attention, as (compute, collectives) seconds of
        each pipeline stage. With `serving.two_batch_overlap`, those of one half batch (its compute stretched by
        the SMs communication holds), to be interleaved with the other half's by `_overlapped`; without, the whole
        pass as compute."""
        scenario = scenario or self._base
        overlap = self.scenario.serving.two_batch_overlap
        if not overlap or tokens < 2:  # one token cannot be split: as two halves with nothing to overlap
            stages = self.forward.stages(tokens, decode=decode, scenario=scenario)
            whole = np.array(
                [forward - busy.get("attention", 0.0) for forward, busy in zip(stages.forward_s, stages.busy)]
            )
            return (whole / 2 if overlap else whole), np.zeros(self.stages)
        stages = self.forward.stages(tokens // 2, decode=decode, scenario=scenario)
        collectives = np.array([forward for forward, _ in stages.comm_s])
        compute = (np.array(stages.forward_s) - collectives) * self.forward.comm_stretch(scenario)
        return compute - np.array([busy.get("attention", 0.0) for busy in stages.busy]), collectives

    def _overlapped(self, compute: float, collectives: float, attention: float, stage: int = 0) -> float:
        """Two half batches (SGLang's and DeepSeek's two-batch overlap) on one stage: each half's compute, its
        attention included (DeepSeek runs one micro-batch's attention while the other's combine is in flight, and
        splits attention evenly between the halves; `attention` is both halves' own kernels), runs under the other
        half's collectives, layer by layer: the pair takes max(2c, 2m) plus one layer's lead-in, min(c, m) /
        layers."""
        half = compute + attention / 2
        return max(2 * half, 2 * collectives) + min(half, collectives) / max(1, self._stage_layers[stage])

    def _attention(self, tokens: float, context: float, decode: bool, stage: int | None = None) -> float:
        """Attention for `tokens` tokens at `context` over a stage's layers, or every layer's (contexts rounded to
        64 tokens: kept once)."""
        if tokens <= 0:
            return 0.0
        if stage is None:
            return sum(self._attention(tokens, context, decode, index) for index in range(self.stages))
        key = (max(1, int(round(tokens))), max(64, int(round(context / 64)) * 64), decode, stage)
        if key not in self._attention_cache:
            # the phase builder takes a prompt's full length and halves it for the causal mask; `context` is
            # already the keys a prompt token attends to on average
            full = key[1] if decode else 2 * key[1]
            self._attention_cache[key] = sum(
                count * self.forward.attention_seconds(layer, key[0], full, decode)
                for layer, count in self._stage_kinds[stage].values()
            )
        return self._attention_cache[key]

    def seconds(
        self,
        prefill_tokens: int,
        prefill_context: float,
        decode_tokens: int,
        decode_context: float,
        drafts: int = 0,
        sampled: int | None = None,
    ) -> float:
        """One iteration: `prefill_tokens` prompt tokens (each attending to `prefill_context` keys on average,
        causal), `decode_tokens` decode tokens reading `decode_context` cached tokens on average, `drafts` draft
        tokens of speculative decoding (`draft_seconds`, on the last stage, where the MTP module sits), and the
        output head on `sampled` rows: every decode token and each prompt whose last chunk this is (default: the
        decode tokens and one prompt where any prefills); an engine computes no logits for a prompt's other
        tokens."""
        total = prefill_tokens + decode_tokens
        if total <= 0:
            return 0.0
        self._build_grid()
        computes, collectives_grid = self._passes[prefill_tokens == 0]
        overlap = self.scenario.serving.two_batch_overlap
        sampled = _sampled_rows(prefill_tokens, decode_tokens, sampled)
        passes = 2 if overlap and total >= 2 else 1  # the grid holds one half batch's compute under overlap
        unsampled = self.head_seconds(total / passes) - self.head_seconds(min(sampled, total) / passes)
        stage_seconds = []
        for stage in range(self.stages):
            compute = float(np.interp(total, self._grid, computes[stage]))
            if stage == self.stages - 1:
                compute = max(0.0, compute - unsampled)
            collectives = float(np.interp(total, self._grid, collectives_grid[stage]))
            if overlap:  # each half batch runs its own attention kernels
                attention = 2 * (
                    self._attention(prefill_tokens / 2, prefill_context, False, stage)
                    + self._attention(decode_tokens / 2, decode_context, True, stage)
                )
                stage_seconds.append(self._overlapped(compute, collectives, attention, stage))
            else:
                attention = self._attention(prefill_tokens, prefill_context, False, stage) + self._attention(
                    decode_tokens, decode_context, True, stage
                )
                stage_seconds.append(compute + attention)
        stage_seconds[-1] += self.draft_seconds(drafts, decode_context)
        return self._pipelined(stage_seconds, total)

    def attention_seconds(
        self, prefill_tokens: float, prefill_context: float, decode_tokens: float, decode_context: float
    ) -> float:
        """An iteration's attention on one rank, every layer's: its prompt tokens' and its decode tokens'."""
        return self._attention(prefill_tokens, prefill_context, False) + self._attention(
            decode_tokens, decode_context, True
        )

    def head_seconds(self, tokens: float) -> float:
        """The output head on `tokens` rows, as the simulator's pass prices it: the vocabulary GEMM and a pass over
        the logits."""
        if tokens <= 0:
            return 0.0
        rows = max(1, int(round(tokens)))
        if rows not in self._head_cache:
            self._head_cache[rows] = self.forward.head_seconds(rows)
        return self._head_cache[rows]

    def _pipelined(self, stage_seconds: list[float], tokens: int) -> float:
        """One engine's iteration through the stages while the other `pp_size - 1` engines keep the pipeline
        busy: max(sum of stages + hops, pp x slowest stage)."""
        if len(stage_seconds) == 1:
            return stage_seconds[0]
        hops = (len(stage_seconds) - 1) * self.hop_seconds(tokens)
        return max(sum(stage_seconds) + hops, len(stage_seconds) * max(stage_seconds))

    def hop_seconds(self, tokens: int) -> float:
        """Sending `tokens` tokens' activations to the next stage: over the network where a stage's GPUs fill a
        node or more (pipeline stages outermost in the rank order), else over NVLink; each TP rank sends its
        share, as Megatron's scatter-gather does."""
        par, cluster, topology = self._base.parallelism, self._base.cluster, self.forward.topology
        size = tokens * self._base.model.hidden_size * self._base.workload.precision.activation_bytes / par.tp_size
        if cluster.world_size // par.pp_size >= cluster.gpus_per_node:
            return topology.network_latency_s + size / topology.nic_bytes_per_s
        return topology.scale_up_latency_s + size / topology.scale_up_bytes_per_s

    def _build_grid(self) -> None:
        """The pass without attention, simulated once per power of two up to the token budget."""
        if self._grid:
            return
        top = max(1, self.scenario.serving.token_budget)
        self._grid = sorted({2**power for power in range(int(np.log2(top)) + 1)} | {top})
        for decode_only, scenario in ((False, self._base), (True, self._decode_base)):
            passes = [self._pass_without_attention(tokens, scenario, decode_only) for tokens in self._grid]
            # stage-major, so that an iteration interpolates each stage's contiguous row
            computes = np.array([c for c, _ in passes]).T.copy()
            self._passes[decode_only] = (computes, np.array([m for _, m in passes]).T.copy())
        computes, collectives = self._passes[True]
        overlap = self.scenario.serving.two_batch_overlap
        self._draft_layers = np.array(
            [
                sum(self._overlapped(c, m, 0.0, stage) if overlap else c for stage, (c, m) in enumerate(zip(cs, ms)))
                for cs, ms in zip(computes.T, collectives.T)
            ]
        )

    def breakdown(
        self,
        prefill_tokens: int,
        prefill_context: float,
        decode_tokens: int,
        decode_context: float,
        sampled: int | None = None,
    ) -> dict:
        """Where one iteration's time goes, seconds by phase: the pass at its token count, phase by phase (each
        rank's mean, waits for the busiest rank as `wait`; before two-batch overlap), with the iteration's own
        attention in place of the pass's and the output head on its `sampled` rows (as `seconds`)."""
        total = prefill_tokens + decode_tokens
        scenario = self._decode_base if prefill_tokens == 0 else self._base
        stages = self.forward.stages(max(1, total), decode=prefill_tokens == 0, scenario=scenario)
        phases: dict[str, float] = {}
        for busy in stages.busy:
            for name, seconds in busy.items():
                if name != "attention":
                    phases[name] = phases.get(name, 0.0) + seconds
        phases["attention"] = self.attention_seconds(prefill_tokens, prefill_context, decode_tokens, decode_context)
        if "lm_head" in phases:
            sampled = _sampled_rows(prefill_tokens, decode_tokens, sampled)
            phases["lm_head"] -= self.head_seconds(max(1, total)) - self.head_seconds(min(sampled, max(1, total)))
        return phases

    def draft_seconds(self, drafts: int, context: float) -> float:
        """Drafting `drafts` tokens with the multi-token prediction module, one module pass per draft step: a
        module is one more transformer layer (the pass's per-layer share and a layer's attention) and the output
        head's GEMM."""
        steps = self.scenario.serving.speculative_tokens
        if drafts <= 0 or steps <= 0:
            return 0.0
        sequences = drafts / steps
        model, layers = self._base.model, max(1, len(self.plan.layers))  # the module: one layer's share
        self._build_grid()
        layer = float(np.interp(sequences, self._grid, self._draft_layers)) / layers
        attention = self._attention(sequences, context, True) / layers
        rows = max(1, int(round(sequences)))
        if rows not in self._draft_head_cache:
            self._draft_head_cache[rows] = float(self.cost.gemm_seconds(rows, model.hidden_size, model.vocab_size))
        return steps * (layer + attention + self._draft_head_cache[rows])

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache one engine holds: an attention rank's memory less weights, buffers and one pass's
        activations (the memory model at this scenario's settings), over the KV bytes of a token; with pipeline
        stages, each GPU holds its stage's layers and the pipeline's cache is shared by its engines."""
        free = self.forward.memory().kv_room_bytes
        model, tp = self._base.model, self._base.parallelism.tp_size
        per_token = accounting.kv_cache_bytes_per_token(model, self._base.workload.precision)
        # a GPU holds its TP rank's share (MLA: all of it) of its stage's layers
        per_token *= accounting.kv_share_per_tp_rank(model, tp) / self.stages
        return max(0, int(free / per_token / self.stages))  # the pipeline's, shared by its `pp_size` engines
