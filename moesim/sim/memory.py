"""Memory per GPU: weights, gradients, optimizer states, activations, all-to-all buffers, KV cache.

The most loaded pipeline stage decides. Sharding follows Megatron-Core: attention and
dense FFN weights split over tensor parallelism, routed experts over expert parallelism
and expert tensor parallelism, layers over pipeline stages; ZeRO stage 1 shards the
optimizer states over data-parallel ranks (expert states over the expert-data-parallel
ranks, dp x tp / ep), stage 2 also gradients, stage 3 also weights. Activations are
kept for the micro-batches in flight under 1F1B (pp on the first stage, one more with the all-to-all
overlap's extra warm-up forward; the interleaved schedule keeps 1 + (p - 1) / (p v) times that,
Narayanan et al. 2021; DualPipe holds two chunks per rank and pp + 1 micro-batches of a chunk in flight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moesim.errors import MoesimError
from moesim.models import accounting
from moesim.scenario import Scenario
from moesim.sim.plan import StagePlan

GB = 1e9


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU on the most loaded stage."""

    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    alltoall_buffer_bytes: float
    kv_cache_bytes: float
    capacity_bytes: float

    @property
    def total_bytes(self) -> float:
        return (
            self.weights_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.alltoall_buffer_bytes
            + self.kv_cache_bytes
        )

    @property
    def kv_room_bytes(self) -> float:
        """What a serving engine's KV cache may take: the capacity less weights, all-to-all buffers and one pass's
        activations."""
        return self.capacity_bytes - self.weights_bytes - self.alltoall_buffer_bytes - self.activations_bytes

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def memory_per_gpu(scenario: Scenario, plan: StagePlan) -> MemoryBreakdown:
    """Memory of the most loaded stage's GPUs."""
    model, par, workload = scenario.model, scenario.parallelism, scenario.workload
    precision = workload.precision
    dp, tp = par.dp_size or 1, par.tp_size
    ep = par.ep_size * par.expert_tp_size  # GPUs one layer's experts are split over (expert tensor parallelism too)
    expert_dp = max(1, dp * tp * par.cp_size // ep)
    training = workload.mode == "training"
    tokens_per_micro = workload.micro_batch_size * workload.seq_len // (par.cp_size * tp)
    per_layer_activation = accounting.activation_bytes_per_token(
        model, precision, workload.activation_recompute, workload.recompute_modules
    ) / (model.num_layers + model.num_encoder_layers)
    worst: MemoryBreakdown | None = None
    dualpipe = par.pipeline_schedule == "dualpipe"
    for stage in range(plan.num_stages):
        # DualPipe: rank `stage` holds two chunks, this stage and its mirror (two copies of the parameters)
        held = (stage, plan.num_stages - 1 - stage) if dualpipe else (stage,)
        dense_params = sum(plan.stage_dense_params(chunk) for chunk in held) / tp
        copies = 1 + scenario.simulation.redundant_experts / model.num_experts  # redundant expert copies
        expert_params = sum(plan.stage_expert_params(chunk) for chunk in held) * copies / ep
        weights = dense_params * precision.weight_bytes + expert_params * precision.expert_weight_bytes
        grads = optimizer = activations = buffers = kv_cache = 0.0
        if training:
            grads = (dense_params + expert_params) * precision.grad_bytes
            optimizer = dense_params * precision.optimizer_bytes_per_param
            expert_optimizer = expert_params * precision.optimizer_bytes_per_param
            if par.zero_stage >= 1:
                optimizer, expert_optimizer = optimizer / dp, expert_optimizer / expert_dp
            if par.zero_stage >= 2:
                grads = dense_params * precision.grad_bytes / dp + expert_params * precision.grad_bytes / expert_dp
            if par.zero_stage >= 3:  # and two layers gathered whole: the one computing, the one prefetched
                sharded = (
                    dense_params * precision.weight_bytes / dp + expert_params * precision.weight_bytes / expert_dp
                )
                working = 2 / max(1, plan.stage_layer_count(stage)) * (weights - sharded)
                weights = sharded + max(0.0, working)
            optimizer += expert_optimizer
            # 1F1B keeps pp - stage micro-batches in flight; the all-to-all overlap's extra warm-up forward one more
            extra = 1 if scenario.simulation.alltoall_overlap != "none" else 0
            in_flight = float(min(par.pp_size - stage + extra, plan.micro_batches))
            chunks = par.virtual_pipeline_size
            # interleaved: (p - s - 1) x 2 + (v - 1) x p + 1 chunk forwards of 1/v of the layers in flight, one more
            # with the all-to-all overlap
            if chunks > 1:
                in_flight = (
                    min(
                        (par.pp_size - stage - 1) * 2 + (chunks - 1) * par.pp_size + 1 + extra,
                        plan.micro_batches * chunks,
                    )
                    / chunks
                )
            layers = float(plan.stage_layer_count(stage))
            if dualpipe:  # pp + 1 micro-batches of a chunk in flight (DeepSeek-V3 report, Table 2)
                in_flight = float(min(par.pp_size + 1, plan.micro_batches))
                layers = sum(plan.stage_layer_count(chunk) for chunk in held) / 2
            activations = per_layer_activation * layers * tokens_per_micro * in_flight
        else:
            context = workload.seq_len + workload.decode_tokens
            kv_per_layer = accounting.kv_cache_bytes_per_token(model, precision) / model.num_layers
            share = accounting.kv_share_per_tp_rank(model, tp)  # MLA's latent: every TP rank holds all of it
            kv_cache = kv_per_layer * plan.stage_layer_count(stage) * context * workload.micro_batch_size * share
            activations = per_layer_activation * plan.pass_tokens_per_rank  # one layer's working set, one chunk
        if plan.stage_moe_layer_count(stage):
            slots = plan.buffer_slots_per_rank
            buffers = 2 * slots * model.hidden_size * precision.activation_bytes  # dispatch + combine
        breakdown = MemoryBreakdown(
            weights, grads, optimizer, activations, buffers, kv_cache, scenario.cluster.gpu.hbm_bytes
        )
        if worst is None or breakdown.total_bytes > worst.total_bytes:
            worst = breakdown
    assert worst is not None
    return worst


TRAINING_ADVICE = (
    "raise pp_size, ep_size or parallelism.zero_stage, or set workload.activation_recompute=selective (with "
    "workload.recompute_modules) or full"
)
INFERENCE_ADVICE = (
    "raise tp_size, pp_size or ep_size, or lower workload.micro_batch_size or seq_len (the KV cache) "
    "or workload.prefill_chunk_tokens (the prefill's activations)"
)


def check_fits(memory: MemoryBreakdown, training: bool = True) -> None:
    """Stop with the shortfall when the most loaded GPU needs more than its memory, with advice for the mode."""
    if memory.total_bytes > memory.capacity_bytes:
        short = (memory.total_bytes - memory.capacity_bytes) / GB
        raise MoesimError(
            f"does not fit: {memory.total_bytes / GB:.1f} GB per GPU needed (weights {memory.weights_bytes / GB:.1f}, "
            f"grads {memory.grads_bytes / GB:.1f}, optimizer {memory.optimizer_bytes / GB:.1f}, activations "
            f"{memory.activations_bytes / GB:.1f}, KV cache {memory.kv_cache_bytes / GB:.1f}, all-to-all buffers "
            f"{memory.alltoall_buffer_bytes / GB:.1f}), the GPU has {memory.capacity_bytes / GB:.0f} GB: short by "
            f"{short:.1f} GB; {TRAINING_ADVICE if training else INFERENCE_ADVICE}"
        )


MEMORY_PARTS = (
    ("weights_bytes", "weights"),
    ("grads_bytes", "gradients"),
    ("optimizer_bytes", "optimizer states"),
    ("activations_bytes", "activations"),
    ("kv_cache_bytes", "KV cache"),
    ("alltoall_buffer_bytes", "all-to-all buffers"),
)
"""The parts of a GPU's memory by their `MemoryBreakdown` keys, as `moesim run` lists them under the peak."""
