"""`Scenario`: the whole input of a moesim run, and how it is loaded.

A scenario file (YAML, TOML or JSON) has six sections: `model`, `cluster`,
`parallelism`, `workload`, `routing` and `sweep`. Loading fills every default (the
routing rule inherits `top_k` and the score function from the model, the cluster's
links inherit the GPU preset's bandwidths) and checks everything that can be checked
before a run, so a scenario that loads is a scenario that runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moesim.cluster.hardware import GpuSpec, gpu_preset
from moesim.errors import MoesimError, ScenarioError
from moesim.models.precision import Precision
from moesim.models.presets import model_preset
from moesim.models.spec import ModelSpec
from moesim.routing.names import RoutingStrategy, unhonoured_settings


class _Section(BaseModel):
    """Common settings: unknown keys are errors, NaN and infinity are not numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _expand_preset(value: Any, resolve: Any, field: str) -> Any:
    """Turn `NAME` or `{preset: NAME, **overrides}` into the full field dict of a preset."""
    if isinstance(value, str):
        value = {"preset": value}
    if isinstance(value, dict) and "preset" in value:
        overrides = {key: val for key, val in value.items() if key != "preset"}
        name = value["preset"]
        if not isinstance(name, str):
            raise ScenarioError(f"{field}.preset: expected a preset name, got {name!r}")
        try:
            base = resolve(name).model_dump()
        except MoesimError as error:
            raise ScenarioError(f"{field}.preset: {error}") from None
        return {**base, **overrides}
    return value


class ClusterSpec(_Section):
    """The machines: how many nodes, which GPU, and how they are connected."""

    num_nodes: int = Field(1, gt=0, description="Number of nodes (servers).")
    gpus_per_node: int = Field(8, gt=0, description="GPUs in each node.")
    gpu: GpuSpec = Field(
        default_factory=lambda: gpu_preset("H100-SXM"),
        description="GPU type: a preset name (H100-SXM, H800, H200, A100-80GB, B200, MI300X), "
        "`{preset: NAME, field: value}`, or a full spec.",
    )
    scale_up_gb_per_s: Optional[float] = Field(
        None, gt=0, description="Intra-node bandwidth per GPU, one direction (GB/s); default: the GPU's."
    )
    nics_per_node: Optional[int] = Field(None, gt=0, description="Scale-out NICs per node; default: one per GPU.")
    nic_gbps: Optional[float] = Field(None, gt=0, description="Line rate of one NIC (Gb/s); default: the GPU preset's.")
    topology: Literal["single_switch", "rail_optimized", "fat_tree"] = Field(
        "rail_optimized",
        description="Scale-out network: one non-blocking switch, rail-optimised leaves, or a leaf/spine fat-tree.",
    )
    nodes_per_leaf: Optional[int] = Field(
        None,
        gt=0,
        description="Nodes whose NICs (of one rail, when rail_optimized) share a leaf switch; default 32 "
        "rail-optimised, 4 fat-tree.",
    )
    oversubscription: float = Field(
        1.0, ge=1.0, description="Leaf-to-spine oversubscription ratio (1 = non-blocking, 2 = half the uplinks)."
    )
    scale_up_latency_us: float = Field(2.0, ge=0, description="Per-message latency inside a node (microseconds).")
    network_latency_us: float = Field(5.0, ge=0, description="Per-message latency across nodes (microseconds).")

    @model_validator(mode="before")
    @classmethod
    def _resolve_gpu(cls, data: Any) -> Any:
        if isinstance(data, dict) and "preset" in data:
            from moesim.cluster.presets import cluster_preset

            name = data["preset"]
            if not isinstance(name, str):
                raise ScenarioError(f"cluster.preset: expected a preset name, got {name!r}")
            try:
                base = cluster_preset(name)
            except MoesimError as error:
                raise ScenarioError(f"cluster.preset: {error}") from None
            data = {**base, **{key: value for key, value in data.items() if key != "preset"}}
        if isinstance(data, dict) and "gpu" in data:
            data = {**data, "gpu": _expand_preset(data["gpu"], gpu_preset, "cluster.gpu")}
        return data

    @model_validator(mode="after")
    def _fill_link_defaults(self) -> "ClusterSpec":
        if self.scale_up_gb_per_s is None:
            self.scale_up_gb_per_s = self.gpu.scale_up_gb_per_s
        if self.nics_per_node is None:
            self.nics_per_node = self.gpus_per_node
        if self.nic_gbps is None:
            self.nic_gbps = self.gpu.nic_gbps
        return self

    @property
    def world_size(self) -> int:
        """Total GPUs."""
        return self.num_nodes * self.gpus_per_node


class ParallelismSpec(_Section):
    """How the model is split across GPUs (Megatron-Core conventions).

    world size = dp_size x tp_size x pp_size x cp_size. Expert parallelism folds into the
    data-, context- and tensor-parallel ranks (Megatron-Core's parallel folding): ep_size x
    expert_tp_size must divide dp_size x cp_size x tp_size; the rest is expert data parallelism.
    """

    dp_size: Optional[int] = Field(
        None, gt=0, description="Data-parallel degree; default: world size / (tp_size x pp_size x cp_size)."
    )
    tp_size: int = Field(1, gt=0, description="Tensor-parallel degree (attention and dense layers).")
    pp_size: int = Field(1, gt=0, description="Pipeline-parallel stages.")
    cp_size: int = Field(1, gt=0, description="Context-parallel degree (sequence split across GPUs).")
    ep_size: int = Field(1, gt=0, description="Expert-parallel degree: GPUs that share one layer's experts.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        1,
        description="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights, across data-parallel "
        "ranks.",
    )
    expert_tp_size: int = Field(
        1,
        gt=0,
        description="Expert tensor parallelism (Megatron-Core's --expert-tensor-parallel-size): each expert's FFN "
        "split over this many GPUs, which all compute the expert's tokens (gathered after the dispatch, "
        "reduce-scattered before the combine).",
    )
    virtual_pipeline_size: int = Field(
        1,
        gt=0,
        description="Model chunks per pipeline stage (Megatron-Core's interleaved 1F1B; 1 = plain 1F1B): the "
        "bubble shrinks by this factor, point-to-point transfers grow by it.",
    )
    pipeline_schedule: Optional[Literal["1f1b", "interleaved", "dualpipe"]] = Field(
        None,
        description="Pipeline schedule: 1f1b, interleaved (Megatron-Core's, with virtual_pipeline_size chunks) or "
        "dualpipe (DeepSeek-V3's: micro-batches from both ends, each rank holding two chunks, a forward and a "
        "backward chunk overlapped); default: interleaved when virtual_pipeline_size > 1, else 1f1b.",
    )

    @property
    def model_parallel_size(self) -> int:
        """GPUs that hold one copy of the model: tp_size x pp_size x cp_size."""
        return self.tp_size * self.pp_size * self.cp_size

    @property
    def world_size(self) -> int:
        return (self.dp_size or 1) * self.model_parallel_size


class WorkloadSpec(_Section):
    """What runs: training or inference batches, and the router scores that drive routing."""

    mode: Literal["training", "inference"] = Field(
        "training", description="Training step or inference (prefill + decode)."
    )
    micro_batch_size: int = Field(1, gt=0, description="Sequences per micro-batch per data-parallel rank.")
    seq_len: int = Field(4096, gt=0, description="Tokens per sequence (the prompt length for inference).")
    global_batch_size: Optional[int] = Field(
        None, gt=0, description="Sequences per optimizer step, all ranks; default: micro_batch_size x dp_size."
    )
    decode_tokens: int = Field(0, ge=0, description="Inference: tokens generated per sequence after the prompt.")
    prefill_chunk_tokens: Optional[int] = Field(
        8192,
        gt=0,
        description="Inference: chunked prefill, tokens per prefill iteration of a replica (a serving engine's "
        "chunked-prefill size; 8,192 is a common default); null = the whole batch's prompts in one pass.",
    )
    scores: Literal["synthetic", "trace"] = Field(
        "synthetic",
        description="Router scores: `synthetic` (generated from the knobs below) or `trace` (recorded file).",
    )
    trace_path: Optional[str] = Field(None, description="Recorded router-score trace (.npz) when scores = trace.")
    expert_popularity_skew: float = Field(
        0.0, ge=0, description="Zipf exponent of expert popularity: 0 = uniform, 1 = strongly skewed."
    )
    score_temperature: float = Field(1.0, gt=0, description="Temperature of synthetic router logits (lower = sharper).")
    layer_correlation: float = Field(
        0.0, ge=0, le=1, description="Correlation of a token's scores between layers (0-1)."
    )
    step_drift: float = Field(0.0, ge=0, le=1, description="How much expert popularity changes between steps (0-1).")
    token_id_skew: float = Field(1.0, ge=0, description="Zipf exponent of token ids (for hash routing).")
    precision: Precision = Field(default_factory=Precision, description="Numeric formats of weights, grads, states.")
    activation_recompute: Literal["none", "selective", "full"] = Field(
        "none",
        description="Activation recomputation in backward: none, selective (the modules below, Megatron-Core's "
        "--recompute-granularity selective) or full (each layer from its input).",
    )
    recompute_modules: list[Literal["core_attn", "mla_up_proj", "layernorm", "moe_act", "mlp", "moe"]] = Field(
        default_factory=list,
        description="Selective recomputation: the modules replayed in backward (Megatron-Core's --recompute-modules; "
        "DeepSeek-V3 recomputes layernorm and mla_up_proj); default with selective: core_attn.",
    )

    @model_validator(mode="after")
    def _trace_needs_path(self) -> "WorkloadSpec":
        if self.scores == "trace" and not self.trace_path:
            raise ValueError("workload.trace_path: scores = 'trace' needs a trace file; set trace_path")
        return self

    @model_validator(mode="after")
    def _modules_need_selective(self) -> "WorkloadSpec":
        if self.recompute_modules and self.activation_recompute != "selective":
            raise ValueError(
                f"workload.recompute_modules: only selective recomputation replays modules, and activation_recompute "
                f"is {self.activation_recompute}; set workload.activation_recompute=selective or drop the modules"
            )
        if self.activation_recompute == "selective" and not self.recompute_modules:
            self.recompute_modules = ["core_attn"]  # Megatron-Core's default module
        return self


class RoutingSpec(_Section):
    """The routing rule and its capacity policy."""

    strategy: Optional[RoutingStrategy] = Field(
        None,
        description="Routing rule (see `moesim.routing.RULES`); default: the model's own (`model.router_strategy`).",
    )
    top_k: Optional[int] = Field(None, gt=0, description="Experts per token; default: the model's.")
    capacity_factor: Optional[float] = Field(
        None,
        gt=0,
        description="Expert capacity = ceil(capacity_factor x tokens x top_k / num_experts); null = dropless.",
    )
    drop_policy: Literal["position", "probability"] = Field(
        "position", description="Which over-capacity tokens are dropped: later positions, or lower router probability."
    )
    pad_to_capacity: bool = Field(
        False,
        description="Pad every expert's input to its capacity and send capacity-sized all-to-all buffers (GShard, "
        "DeepSpeed, Tutel, Megatron-Core's --moe-pad-expert-input-to-capacity); needs a capacity.",
    )
    score_function: Optional[Literal["softmax", "sigmoid"]] = Field(
        None, description="Router logits to affinities; default: the model's."
    )
    normalize_weights: Optional[bool] = Field(
        None,
        description="Renormalise each token's weights to sum to 1; default: the model's (`router_normalize_weights`).",
    )
    group_score: Optional[Literal["max", "top2_sum"]] = Field(
        None, description="Score of an expert group (group-limited rules); default: the model's (`router_group_score`)."
    )
    num_expert_groups: Optional[int] = Field(
        None, gt=0, description="Group/node-limited routing: number of groups; default: the model's."
    )
    topk_groups: Optional[int] = Field(None, gt=0, description="Group/node-limited routing: groups per token.")
    options: dict[str, Any] = Field(default_factory=dict, description="Rule-specific options (see each rule's docs).")

    @model_validator(mode="after")
    def _padding_needs_capacity(self) -> "RoutingSpec":
        if self.pad_to_capacity and self.capacity_factor is None and self.strategy != "expert_choice":
            raise ValueError(
                "routing.pad_to_capacity: padding needs a capacity; set routing.capacity_factor "
                "(or pad_to_capacity: false for dropless routing)"
            )
        return self


class SweepSpec(_Section):
    """A grid of scenario variants: every combination of the listed values."""

    params: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted scenario paths and the values to try, e.g. {'routing.capacity_factor': [1.0, 1.25]}.",
    )
    workers: int = Field(2, gt=0, description="Worker processes for a local sweep.")
    store: str = Field("moesim-results.sqlite", description="Results store (SQLite file) written as points finish.")

    @field_validator("params")
    @classmethod
    def _known_paths(cls, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in params.items():
            problem = path_problem(path.split("."))
            if problem:
                raise ValueError(f"sweep.params: '{path}': {problem}")
            if not values:
                raise ValueError(f"sweep.params: '{path}' has no values; list at least one")
        return params


class SimulationSpec(_Section):
    """How the simulator models the step: network mode, collective algorithms, overlap, sampling."""

    network_mode: Literal["full", "fast"] = Field(
        "full",
        description="`full`: max-min fair sharing of every link; `fast`: the most loaded link decides (a bound).",
    )
    alltoall_algorithm: Literal["flat", "hierarchical", "deepep", "deepep_low_latency"] = Field(
        "flat",
        description="MoE all-to-all: flat (NCCL), hierarchical two-stage (Tutel/DeepSpeed), deepep (DeepEP's normal "
        "kernels: node-deduplicated RDMA, then NVLink) or deepep_low_latency (DeepEP's decode kernels: every "
        "token-expert copy over RDMA).",
    )
    allreduce_algorithm: Literal["auto", "ring", "hierarchical"] = Field(
        "auto", description="Data-parallel gradient all-reduce algorithm (auto = the faster)."
    )
    overlap_shared_experts: bool = Field(True, description="Shared experts compute while the dispatch is in flight.")
    overlap_grad_reduce: bool = Field(True, description="Gradient all-reduce overlaps the last backward pass.")
    alltoall_overlap: Literal["none", "1f1b"] = Field(
        "none",
        description="Training: 1f1b pairs each steady-state forward with another micro-batch's backward so that "
        "one's all-to-alls run under the other's compute (Megatron-Core's EP all-to-all overlap, DeepSeek's "
        "two-micro-batch overlap); none runs them in turn.",
    )
    comm_sms: int = Field(
        0,
        ge=0,
        description="SMs the communication kernels occupy while they run, taken from overlapped compute "
        "(DeepSeek-V3: 20 of the H800's 132 for DeepEP); 0 = copy engines or free.",
    )
    moe_chunks: int = Field(
        1,
        gt=0,
        le=64,
        description="Split each MoE layer's tokens into chunks whose dispatch, experts and combine pipeline.",
    )
    max_routed_tokens: int = Field(
        65536,
        gt=0,
        description="Route at most this many tokens per layer and scale the loads (a sample; said in the output).",
    )
    max_routed_layers: Optional[int] = Field(
        None,
        gt=0,
        description="Distinct routed MoE layers; the others reuse them in turn. Default: 4 in full mode, 1 in fast "
        "mode.",
    )
    redundant_experts: int = Field(
        0,
        ge=0,
        description="Extra copies of the hottest experts spread over the EP ranks (DeepSeek-V3 EPLB); 0 = none.",
    )
    bias_warmup_steps: int = Field(
        40,
        ge=0,
        description="bias_balanced routing: steps of bias updates on synthetic scores before the simulated step.",
    )
    cost_profile: Optional[str] = Field(
        None, description="Measured compute profile (JSON) replacing the default curves."
    )


class Scenario(_Section):
    """The whole input: model, cluster, parallelism, workload, routing and sweep."""

    name: str = Field("scenario", description="Name shown in reports and results.")
    description: str = Field("", description="What question this scenario answers.")
    seed: int = Field(0, ge=0, description="Seed for every random choice (same seed, same numbers).")
    model: ModelSpec = Field(
        ..., description="A preset name, `{preset: NAME, field: value, ...}`, or a full architecture."
    )
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Nodes, GPUs and network.")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec, description="DP / TP / PP / CP / EP degrees.")
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec, description="Batch, sequence and router scores.")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="Routing rule and capacity.")
    simulation: SimulationSpec = Field(default_factory=SimulationSpec, description="Simulator options.")
    sweep: SweepSpec = Field(default_factory=SweepSpec, description="Grid of variants for `moesim sweep`.")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        _reject_booleans(cls, data, "")
        return data

    @model_validator(mode="before")
    @classmethod
    def _resolve_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            data = {**data, "model": _expand_preset(data["model"], model_preset, "model")}
        return data

    @model_validator(mode="after")
    def _check_and_fill(self) -> "Scenario":
        model, par, cluster, routing = self.model, self.parallelism, self.cluster, self.routing
        if cluster.world_size > MAX_WORLD_SIZE:
            raise ValueError(
                f"cluster.num_nodes: {cluster.num_nodes:,} nodes x {cluster.gpus_per_node} GPUs = "
                f"{cluster.world_size:,} GPUs; "
                f"moesim simulates clusters of at most {MAX_WORLD_SIZE:,} GPUs"
            )
        if self.workload.seq_len > model.max_seq_len:
            raise ValueError(
                f"workload.seq_len: {self.workload.seq_len:,} tokens is longer than {model.name}'s context "
                f"({model.max_seq_len:,}); use at most {model.max_seq_len:,} or set model.max_seq_len"
            )
        sim = self.simulation
        if sim.comm_sms and (cluster.gpu.sms is None or sim.comm_sms >= cluster.gpu.sms):
            raise ValueError(
                f"simulation.comm_sms: {sim.comm_sms} SMs for communication, and {cluster.gpu.name} has "
                f"{cluster.gpu.sms or 'an unknown number of'} SMs; use fewer (DeepEP: 20 of 132) or set cluster.gpu.sms"
            )
        if sim.alltoall_overlap != "none" and (self.workload.mode != "training" or par.virtual_pipeline_size > 1):
            raise ValueError(
                "simulation.alltoall_overlap: modelled for training with the plain 1F1B schedule; set "
                "alltoall_overlap=none (inference overlap belongs to the serving planner; interleaved: not yet)"
            )
        if "mla_up_proj" in self.workload.recompute_modules and model.attention_type != "mla":
            raise ValueError(
                f"workload.recompute_modules: mla_up_proj recomputes MLA's up-projections and {model.name} has "
                f"{model.attention_type} attention; drop mla_up_proj (core_attn recomputes its attention)"
            )
        if par.dp_size is None:
            if cluster.world_size % par.model_parallel_size:
                raise ValueError(
                    f"parallelism: the cluster's {cluster.world_size} GPUs are not a multiple of tp_size x pp_size "
                    f"x cp_size ({par.model_parallel_size}); change the cluster or the parallel degrees"
                )
            par.dp_size = cluster.world_size // par.model_parallel_size
        if par.world_size != cluster.world_size:
            raise ValueError(
                f"parallelism: dp_size x tp_size x pp_size x cp_size = {par.dp_size}x{par.tp_size}x{par.pp_size}"
                f"x{par.cp_size} = {par.world_size}, but the cluster has {cluster.num_nodes} nodes x "
                f"{cluster.gpus_per_node} GPUs = {cluster.world_size}; make the two equal"
            )
        if model.num_experts % par.ep_size:
            raise ValueError(
                f"parallelism.ep_size: num_experts ({model.num_experts}) is not divisible by ep_size "
                f"({par.ep_size}); use an ep_size that divides {model.num_experts}"
            )
        folded = par.dp_size * par.cp_size * par.tp_size
        if folded % par.ep_size:
            raise ValueError(
                f"parallelism.ep_size: ep_size ({par.ep_size}) must divide dp_size x cp_size x tp_size ({folded})"
            )
        if folded % (par.ep_size * par.expert_tp_size) or model.moe_intermediate_size % par.expert_tp_size:
            raise ValueError(
                f"parallelism.expert_tp_size: ep_size x expert_tp_size ({par.ep_size * par.expert_tp_size}) must "
                f"divide dp_size x cp_size x tp_size ({folded}) and expert_tp_size the experts' FFN size "
                f"({model.moe_intermediate_size}); choose a smaller expert_tp_size"
            )
        if par.pp_size > model.num_layers:
            raise ValueError(
                f"parallelism.pp_size: {par.pp_size} pipeline stages for {model.num_layers} layers; "
                f"use at most {model.num_layers} (stages may hold uneven layer counts)"
            )
        if self.workload.precision.gemm == "fp8" and not cluster.gpu.peak_fp8_tflops:
            raise ValueError(
                f"workload.precision.gemm: {cluster.gpu.name} has no fp8 tensor cores (peak_fp8_tflops is null); "
                "use gemm: bf16 or a GPU with fp8 (H100-SXM, H800, H200, B200)"
            )
        top_k = routing.top_k or model.top_k
        if top_k > model.num_experts:
            raise ValueError(
                f"routing.top_k: top_k ({top_k}) is larger than num_experts ({model.num_experts}); "
                f"set top_k <= {model.num_experts}"
            )
        groups = routing.num_expert_groups or model.num_expert_groups
        # the model's groups per token go with the model's groups; other groups default to no restriction
        groups_per_token = routing.topk_groups or (model.topk_groups if groups == model.num_expert_groups else groups)
        if groups is not None:
            if model.num_experts % groups:
                raise ValueError(
                    f"routing.num_expert_groups: num_experts ({model.num_experts}) is not divisible by {groups}"
                )
            groups_per_token = groups_per_token or groups
            if groups_per_token > groups:
                raise ValueError(f"routing.topk_groups: {groups_per_token} is more than num_expert_groups ({groups})")
            if top_k > groups_per_token * (model.num_experts // groups):
                raise ValueError(
                    f"routing.topk_groups: {groups_per_token} groups of {model.num_experts // groups} experts "
                    f"cannot hold top_k ({top_k}) experts; raise topk_groups"
                )
        sequences_per_step = self.workload.micro_batch_size * par.dp_size
        global_batch = self.workload.global_batch_size or sequences_per_step
        if global_batch % sequences_per_step:
            raise ValueError(
                f"workload.global_batch_size: {global_batch} is not a multiple of micro_batch_size x dp_size "
                f"({sequences_per_step})"
            )
        self.workload.global_batch_size = global_batch
        micro_batches = global_batch // sequences_per_step
        schedule = par.pipeline_schedule or ("interleaved" if par.virtual_pipeline_size > 1 else "1f1b")
        if (schedule == "interleaved") != (par.virtual_pipeline_size > 1):
            raise ValueError(
                f"parallelism.pipeline_schedule: {schedule} and virtual_pipeline_size {par.virtual_pipeline_size} "
                "disagree; the interleaved schedule (and only it) needs virtual_pipeline_size > 1"
            )
        if schedule == "dualpipe":
            if (
                self.workload.mode != "training"
                or par.pp_size < 2
                or par.pp_size % 2
                or micro_batches < 2 * par.pp_size
                or micro_batches % 2
            ):
                raise ValueError(
                    f"parallelism.pipeline_schedule: DualPipe trains with an even pp_size of at least 2 and an even "
                    f"number of micro-batches per step, at least 2 x pp_size (here pp_size {par.pp_size}, "
                    f"{micro_batches} micro-batches, {self.workload.mode}); choose 1f1b or change them"
                )
            if self.simulation.alltoall_overlap != "none":
                raise ValueError(
                    "simulation.alltoall_overlap: DualPipe overlaps its forward and backward chunks by construction; "
                    "leave alltoall_overlap at none with pipeline_schedule=dualpipe"
                )
        par.pipeline_schedule = schedule
        if par.virtual_pipeline_size > 1:
            if par.pp_size == 1 or micro_batches % par.pp_size:
                raise ValueError(
                    "parallelism.virtual_pipeline_size: the interleaved schedule needs pp_size > 1 and "
                    "micro-batches per "
                    f"step ({micro_batches}) a multiple of pp_size ({par.pp_size}); change global_batch_size or set "
                    "virtual_pipeline_size=1"
                )
        routing.top_k = top_k
        routing.strategy = routing.strategy or model.router_strategy
        routing.score_function = routing.score_function or model.router_score_function
        routing.normalize_weights = (
            model.router_normalize_weights if routing.normalize_weights is None else routing.normalize_weights
        )
        routing.group_score = routing.group_score or model.router_group_score
        routing.num_expert_groups = groups
        routing.topk_groups = groups_per_token
        problems = unhonoured_settings(
            routing.strategy, routing.score_function, groups, groups_per_token, model.router_bias
        )
        if problems:
            raise ValueError(f"routing.strategy: '{routing.strategy}' cannot honour {'; '.join(problems)}")
        from moesim.routing.registry import rule_options

        accepted = rule_options(routing.strategy)
        unknown = [key for key in routing.options if key not in accepted]
        if unknown:
            raise ValueError(
                f"routing.options: '{routing.strategy}' has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(accepted) or 'none'}"
            )
        return self


def _reject_booleans(model: type[BaseModel], data: Any, prefix: str) -> None:
    """true/false where a number belongs is an error (pydantic would read it as 1/0), in every section."""
    if not isinstance(data, dict):
        return
    for key, field in model.model_fields.items():
        if key not in data:
            continue
        value, annotation = data[key], field.annotation
        kinds = {annotation, *getattr(annotation, "__args__", ())}
        if isinstance(value, bool) and bool(kinds & {int, float}) and bool not in kinds:
            raise ValueError(f"{prefix}{key}: {str(value).lower()} is not a number; give one")
        section = _section_class(annotation)
        if section is not None:
            _reject_booleans(section, value, f"{prefix}{key}.")


# ---------------------------------------------------------------- paths and overrides
def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `Optional[X]`), if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def path_problem(path: Sequence[Any], root: type[BaseModel] = Scenario) -> str | None:
    """Why a dotted scenario path does not name a field, or None if it does."""
    cls: type[BaseModel] | None = root
    for depth, part in enumerate(path):
        if cls is None:
            return None  # inside a free-form mapping (routing.options): anything goes
        if part == "preset" and cls in (ModelSpec, GpuSpec, ClusterSpec):
            continue
        if part not in cls.model_fields:
            where = ".".join(str(p) for p in path[:depth]) or "the top level"
            return _nearest_key_message(str(part), list(cls.model_fields), where)
        annotation = cls.model_fields[part].annotation
        nested = _section_class(annotation)
        if nested is None and depth < len(path) - 1 and not _is_mapping(annotation):
            return f"'{part}' is a value, not a section"
        cls = nested
    return None


def _is_mapping(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict


def _nearest_key_message(key: str, valid: list[str], where: str) -> str:
    import difflib

    def likeness(name: str) -> tuple[float, bool]:  # equally alike: the key's own completion first
        return difflib.SequenceMatcher(None, key, name).ratio(), name.startswith(key)

    best = max(valid, key=likeness, default=None)
    close = [best] if best is not None and likeness(best)[0] >= 0.5 else []
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown key '{key}' in {where}; {hint}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value), the value read as YAML (numbers, null, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.strip().split(".")]
    if not sep or not all(path):
        raise ScenarioError(f"--set '{text}': expected KEY=VALUE with a dotted key, e.g. routing.top_k=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return path, value


MAX_WORLD_SIZE = 2**20
"""The largest cluster a scenario may describe (the network model holds a few numbers per link)."""

_PRESET_SECTIONS = {("model",), ("cluster", "gpu")}


def apply_overrides(document: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `document` with each `a.b=c` override set (sections created as needed)."""
    result = json.loads(json.dumps(document, default=str)) if overrides else document
    for text in overrides:
        path, value = parse_override(text)
        problem = path_problem(path)
        if problem:
            raise ScenarioError(f"--set '{text}': {problem}")
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str) and tuple(path[: depth + 1]) in _PRESET_SECTIONS:
                child = {"preset": child}  # a preset name plus overrides
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return result


# ---------------------------------------------------------------- loading
def read_document(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON scenario file into a mapping; every failure is a ScenarioError."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ScenarioError(f"{path}: cannot read the file ({reason})") from None
    if not text.strip():
        raise ScenarioError(f"{path}: the file is empty; a scenario needs at least a `model:` entry")
    suffix = path.suffix.lower()
    syntax = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
    try:
        if syntax == "TOML":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            document = tomllib.loads(text)
        elif syntax == "JSON":
            document = json.loads(text)
        else:
            document = yaml.safe_load(text)
    except Exception as error:  # each parser has its own error type; all mean "not valid syntax"
        raise ScenarioError(f"{path}: not valid {syntax} ({_syntax_problem(error)})") from None
    if document is None:
        raise ScenarioError(f"{path}: the file holds no scenario; it needs at least a `model:` entry")
    if not isinstance(document, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of sections, found {type(document).__name__}")
    return document


def _syntax_problem(error: Exception) -> str:
    """Where and what a parser complained about, in one line."""
    mark = getattr(error, "problem_mark", None)  # YAML
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', '') or error}"
    if isinstance(error, json.JSONDecodeError):
        return f"line {error.lineno}, column {error.colno}: {error.msg}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _format_validation_error(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field and the fix."""
    problems = error.errors()
    first = problems[0]
    location = list(first["loc"])
    where = ".".join(str(part) for part in location)
    message = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "extra_forbidden":
        message = path_problem([str(part) for part in location]) or f"unknown key '{where}'"
    elif kind == "missing":
        message = f"{where}: required; add it to the scenario"
    elif where and not message.startswith(where.split(".")[0]):
        shown = first.get("input")
        got = "" if isinstance(shown, dict) else f" (got {shown!r})"
        message = f"{where}: {message.replace('Input should', 'should')}{got}"
    more = len(problems) - 1
    return message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def scenario_from_dict(document: Any, overrides: Sequence[str] = (), origin: str = "scenario") -> Scenario:
    """Validate a parsed document (plus overrides) into a `Scenario`; problems are ScenarioErrors."""
    if not isinstance(document, dict):
        raise ScenarioError(f"{origin}: a scenario must be a mapping of sections, found {type(document).__name__}")
    document = apply_overrides(document, overrides)
    try:
        return Scenario.model_validate(document)
    except ValidationError as error:
        raise ScenarioError(f"{origin}: {_format_validation_error(error)}") from None
    except ScenarioError as error:
        raise ScenarioError(f"{origin}: {error}") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        raise ScenarioError(f"{origin}: {type(error).__name__}: {error}") from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load, override and validate a scenario file.

    >>> load_scenario("scenarios/mixtral-8x7b-serving.yaml", overrides=["routing.top_k=1"])  # doctest: +SKIP
    """
    return scenario_from_dict(read_document(path), overrides, origin=str(path))


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of scenario files, with preset names allowed where a preset may stand."""
    from moesim.cluster.hardware import gpu_preset_names
    from moesim.models.presets import model_preset_names

    schema = Scenario.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def preset_or_spec(spec_ref: str, names: list[str], label: str) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string", "enum": names, "description": f"{label} preset name"},
                {
                    "type": "object",
                    "required": ["preset"],
                    "properties": {"preset": {"type": "string", "enum": names}},
                    "description": f"{label} preset with overridden fields",
                },
                {"$ref": spec_ref},
            ]
        }

    schema["properties"]["model"] = {
        **preset_or_spec("#/$defs/ModelSpec", model_preset_names(), "Model"),
        "description": Scenario.model_fields["model"].description,
    }
    cluster = defs["ClusterSpec"]["properties"]
    from moesim.cluster.presets import cluster_preset_names

    cluster["preset"] = {
        "type": "string",
        "enum": cluster_preset_names(),
        "description": "A cluster preset whose fields the others override.",
    }
    cluster["gpu"] = {
        **preset_or_spec("#/$defs/GpuSpec", gpu_preset_names(), "GPU"),
        "description": ClusterSpec.model_fields["gpu"].description,
    }
    return schema
