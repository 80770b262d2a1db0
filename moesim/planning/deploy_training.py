"""A training plan as Megatron-Core's arguments (Megatron-LM's `pretrain_gpt.py`).

Megatron-Core is the open stack whose conventions moesim's parallel layout follows (parallel folding, ETP, VPP,
selective recompute modules), so every planned training scenario is given as its flags, whatever stack the
scenario names; where that stack does something Megatron-Core has no flag for (DeepSeek's DualPipe, a routing
rule Megatron does not ship) a note says so and the flags show the nearest Megatron-Core run.

Flag names and rules are Megatron-LM's (commit d98e8a6, 2026-08-22): `megatron/training/arguments.py` (parallel
sizes, pipeline layout, distributed optimizer, overlaps), `megatron/core/transformer/transformer_config.py` and
`model_parallel_config.py` (fields that become `--field-name` flags: recompute, FP8, MoE router and dispatcher),
`megatron/core/transformer/moe/README.md` (MoE flags, CUDA_DEVICE_MAX_CONNECTIONS).
"""

from __future__ import annotations

from typing import Any

from moesim.planning.deploy import Deployment, Flag, Launch

SOURCE = (
    "Megatron-LM d98e8a6: megatron/training/arguments.py, megatron/core/transformer/transformer_config.py, "
    "megatron/core/transformer/moe/README.md"
)

RECIPE_FORMAT = {"delayed": "hybrid", "tensorwise": "hybrid", "blockwise": "e4m3", "mxfp8": "e4m3"}
"""--fp8-format for each --fp8-recipe: E4M3 forward, E5M2 gradients (hybrid) for per-tensor scaling; E4M3 throughout
for the block-scaled recipes (DeepSeek-V3 report 3.3.2; Transformer Engine's block scaling takes E4M3)."""

DROP_POLICY = {"probability": "probs", "position": "position"}


def _parallel_flags(scenario: Any) -> tuple[list[Flag], list[str]]:
    par = scenario.parallelism
    flags = [
        Flag("--tensor-model-parallel-size", str(par.tp_size), "parallelism.tp_size"),
        Flag("--pipeline-model-parallel-size", str(par.pp_size), "parallelism.pp_size"),
        Flag("--expert-model-parallel-size", str(par.ep_size), "parallelism.ep_size"),
        Flag("--expert-tensor-parallel-size", str(par.expert_tp_size), "parallelism.expert_tp_size"),
    ]
    notes = []
    if par.cp_size > 1:
        flags.append(Flag("--context-parallel-size", str(par.cp_size), "parallelism.cp_size"))
    if par.tp_size > 1:
        flags.append(Flag("--sequence-parallel", None, "parallelism.tp_size > 1 (moesim splits the sequence by TP)"))
    if par.virtual_pipeline_size > 1:
        flags.append(
            Flag("--num-virtual-stages-per-pipeline-rank", str(par.virtual_pipeline_size), "virtual_pipeline_size")
        )
    if par.pipeline_layers:
        flags.append(Flag("--pipeline-model-parallel-layout", _layout(scenario), "parallelism.pipeline_layers"))
    if par.pipeline_schedule == "dualpipe":
        notes.append(
            "pipeline_schedule dualpipe (DeepSeek-V3's DualPipe) has no Megatron-Core flag: the flags run Megatron's "
            "1F1B with the same stages, whose bubble moesim puts at (PP-1) micro-batch passes against DualPipe's "
            "(PP/2-1); simulate pipeline_schedule=1f1b before deploying them"
        )
    zero = par.zero_stage
    if zero == 1:
        flags.append(Flag("--use-distributed-optimizer", None, "parallelism.zero_stage = 1"))
    elif zero in (2, 3):
        strategy = "optim_grads" if zero == 2 else "optim_grads_params"
        flags += [
            Flag("--use-megatron-fsdp", None, f"parallelism.zero_stage = {zero}"),
            Flag("--data-parallel-sharding-strategy", strategy, f"parallelism.zero_stage = {zero}"),
        ]
    return flags, notes


def _layout(scenario: Any) -> str:
    """`parallelism.pipeline_layers` as Megatron's layout string: E (embedding) on the first stage, t a decoder
    layer, m an MTP module and L the loss on the last, stages split by |, `t*n` for n layers."""
    counts = list(scenario.parallelism.pipeline_layers)
    mtp = scenario.model.num_mtp_modules if scenario.workload.train_mtp else 0
    counts[-1] = max(0, counts[-1] - mtp)  # moesim counts the MTP modules on the last stage
    stages = [f"t*{count}" if count else "" for count in counts]
    stages[-1] += "m" * mtp
    return "E" + "|".join(stages) + "L"


def _batch_flags(scenario: Any) -> list[Flag]:
    work = scenario.workload
    flags = [
        Flag("--micro-batch-size", str(work.micro_batch_size), "workload.micro_batch_size"),
        Flag("--seq-length", str(work.seq_len), "workload.seq_len"),
    ]
    if work.global_batch_size:
        flags.append(Flag("--global-batch-size", str(work.global_batch_size), "workload.global_batch_size"))
    if work.activation_recompute == "full":
        flags += [
            Flag("--recompute-granularity", "full", "workload.activation_recompute"),
            Flag("--recompute-method", "uniform", "workload.activation_recompute (every layer)"),
            Flag("--recompute-num-layers", "1", "workload.activation_recompute (every layer)"),
        ]
    elif work.activation_recompute == "selective":
        flags.append(Flag("--recompute-granularity", "selective", "workload.activation_recompute"))
        if work.recompute_modules:
            modules = " ".join(work.recompute_modules)
            flags.append(Flag("--recompute-modules", modules, "workload.recompute_modules", many=True))
    flags.append(Flag("--bf16", None, "bf16 weights and activations"))
    precision = work.precision
    if precision.gemm == "fp8":
        recipe = precision.fp8_recipe or "delayed"
        flags += [
            Flag("--fp8-format", RECIPE_FORMAT[recipe], "workload.precision.gemm = fp8"),
            Flag("--fp8-recipe", recipe, "workload.precision.fp8_recipe"),
        ]
    model = scenario.model
    if model.num_mtp_modules and work.train_mtp:
        flags.append(Flag("--mtp-num-layers", str(model.num_mtp_modules), "workload.train_mtp, the model's MTP"))
    return flags


def _moe_flags(scenario: Any) -> tuple[list[Flag], list[str]]:
    sim, routing, model = scenario.simulation, scenario.routing, scenario.model
    flags, notes = [], []
    algorithm = sim.alltoall_algorithm
    if algorithm in ("deepep", "deepep_low_latency"):
        flags += [
            Flag("--moe-token-dispatcher-type", "flex", "simulation.alltoall_algorithm = deepep"),
            Flag("--moe-flex-dispatcher-backend", "deepep", "simulation.alltoall_algorithm = deepep"),
            Flag("--moe-deepep-num-sms", str(sim.comm_sms), "simulation.comm_sms"),
        ]
        if algorithm == "deepep_low_latency":
            notes.append("deepep_low_latency is an inference kernel: Megatron-Core trains with DeepEP's normal ones")
    else:
        flags.append(Flag("--moe-token-dispatcher-type", "alltoall", f"simulation.alltoall_algorithm = {algorithm}"))
        if algorithm == "hierarchical":
            notes.append(
                "alltoall_algorithm hierarchical (node-deduplicated all-to-all) has no Megatron-Core flag of its own; "
                "its flex dispatcher with --moe-flex-dispatcher-backend hybridep is the nearest"
            )
    if sim.moe_kernels == "fused":
        flags += [
            Flag("--moe-grouped-gemm", None, "simulation.moe_kernels = fused"),
            Flag("--moe-permute-fusion", None, "simulation.moe_kernels = fused"),
        ]
    if (sim.router_kernels or sim.moe_kernels) == "fused":
        flags.append(Flag("--moe-router-fusion", None, "simulation.router_kernels = fused"))
    if model.num_shared_experts and sim.overlap_shared_experts and algorithm not in ("deepep", "deepep_low_latency"):
        flags.append(Flag("--moe-shared-expert-overlap", None, "simulation.overlap_shared_experts"))
    if sim.alltoall_overlap == "1f1b":
        flags.append(Flag("--overlap-moe-expert-parallel-comm", None, "simulation.alltoall_overlap = 1f1b"))
        if scenario.parallelism.pp_size > 1 and scenario.parallelism.virtual_pipeline_size == 1:
            notes.append(
                "Megatron-Core takes --overlap-moe-expert-parallel-comm with PP > 1 only with virtual pipeline stages "
                "(transformer_config.py): set parallelism.virtual_pipeline_size > 1, or drop the overlap"
            )
    router_flags, router_notes = _router_flags(scenario)
    flags += router_flags
    notes += router_notes
    if routing.capacity_factor is not None:
        flags += [
            Flag("--moe-expert-capacity-factor", f"{routing.capacity_factor:g}", "routing.capacity_factor"),
            Flag("--moe-token-drop-policy", DROP_POLICY[routing.drop_policy], "routing.drop_policy"),
        ]
        if routing.pad_to_capacity:
            flags.append(Flag("--moe-pad-expert-input-to-capacity", None, "routing.pad_to_capacity"))
    if sim.redundant_experts:
        notes.append("simulation.redundant_experts has no Megatron-Core training flag (an inference placement)")
    return flags, notes


def _router_flags(scenario: Any) -> tuple[list[Flag], list[str]]:
    routing, model = scenario.routing, scenario.model
    strategy = routing.strategy
    top_k = routing.top_k or model.top_k
    flags = [Flag("--moe-router-topk", str(top_k), "routing.top_k (the model's)")]
    if routing.score_function == "sigmoid":
        flags.append(Flag("--moe-router-score-function", "sigmoid", "routing.score_function"))
    groups = routing.num_expert_groups or model.num_expert_groups
    per_token = routing.topk_groups or model.topk_groups
    if strategy in ("bias_balanced", "group_limited") and groups and per_token and per_token < groups:
        flags += [
            Flag("--moe-router-num-groups", str(groups), "routing.num_expert_groups"),
            Flag("--moe-router-group-topk", str(per_token), "routing.topk_groups"),
        ]
    balancing = {"top_k": "aux_loss", "group_limited": "aux_loss", "sinkhorn": "sinkhorn", "bias_balanced": "none"}
    notes = []
    if strategy in balancing:
        flags.append(Flag("--moe-router-load-balancing-type", balancing[strategy], f"routing.strategy = {strategy}"))
    if strategy == "bias_balanced":
        flags.append(Flag("--moe-router-enable-expert-bias", None, "routing.strategy = bias_balanced"))
    elif strategy == "balanced":
        flags.append(Flag("--moe-router-force-load-balancing", None, "routing.strategy = balanced (a benchmark)"))
    elif strategy not in balancing:
        notes.append(
            f"routing.strategy {strategy} has no Megatron-Core router: the flags give its top-{top_k} choice; the "
            "rule itself needs a router of your own"
        )
    return flags, notes


def _overlap_flags(scenario: Any) -> list[Flag]:
    sim = scenario.simulation
    flags = []
    if sim.overlap_grad_reduce:
        flags.append(Flag("--overlap-grad-reduce", None, "simulation.overlap_grad_reduce"))
    if sim.overlap_param_gather and scenario.parallelism.zero_stage >= 1:
        flags.append(Flag("--overlap-param-gather", None, "simulation.overlap_param_gather"))
    return flags


def megatron_deployment(scenario: Any) -> Deployment:
    """The training scenario as one `torchrun ... pretrain_gpt.py` job with Megatron-Core's flags."""
    par, cluster = scenario.parallelism, scenario.cluster
    parallel, parallel_notes = _parallel_flags(scenario)
    moe, moe_notes = _moe_flags(scenario)
    flags = (*parallel, *_batch_flags(scenario), *moe, *_overlap_flags(scenario))
    split = par.tp_size > 1 or par.cp_size > 1
    connections = "32" if scenario.simulation.alltoall_overlap == "1f1b" and not split else "1"
    environment = (("CUDA_DEVICE_MAX_CONNECTIONS", connections),)
    program = (
        f"torchrun --nnodes {cluster.num_nodes} --nproc-per-node {cluster.gpus_per_node} "
        "--node-rank $NODE_RANK --master-addr $MASTER_ADDR pretrain_gpt.py"
    )
    launch = Launch("training", program, flags, 1, cluster.num_nodes, cluster.gpus_per_node, environment)
    notes = [*parallel_notes, *moe_notes]
    stack = scenario.stack.name
    if stack not in (None, "megatron-core"):
        notes.insert(0, f"the scenario names stack {stack}; the flags are Megatron-Core's for the same plan")
    notes.append(
        "model flags (--num-layers, --hidden-size, --num-experts, ...), data, tokenizer, optimizer and "
        "checkpoint flags come from the model's recipe and are not repeated"
    )
    return Deployment("Megatron-Core (Megatron-LM pretrain_gpt.py)", SOURCE, (launch,), tuple(notes))
