"""`Scenario`: the whole input, its sections checked against each other and every default filled."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from moesim.errors import ScenarioError
from moesim.models.hf_import import config_reference, hf_file_fields
from moesim.models.presets import model_preset
from moesim.models.spec import ModelSpec
from moesim.routing.names import unhonoured_settings
from moesim.routing.rules import rule_options
from moesim.scenario.paths import field_path_problem, section_class
from moesim.scenario.sections import (
    ClusterSpec,
    ParallelismSpec,
    RoutingSpec,
    SweepSpec,
    WorkloadSpec,
    _expand_preset,
    _Section,
)
from moesim.scenario.serving import ServingSpec, most_tokens
from moesim.scenario.simulation_options import SimulationSpec
from moesim.scenario.stacks import ENGINES, StackSpec

MAX_WORLD_SIZE = 2**20
"""The largest cluster a scenario may describe (the network model holds a few numbers per link)."""


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
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Requests for `moesim serve` (continuous batching)."
    )
    stack: StackSpec = Field(
        default_factory=StackSpec,
        description="The framework or engine whose defaults to use (`moesim check` lists them).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        _reject_booleans(cls, data, "")
        return data

    @model_validator(mode="before")
    @classmethod
    def _resolve_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            data = {**data, "model": _expand_model(data["model"])}
        return data

    @model_validator(mode="after")
    def _sweep_paths(self) -> "Scenario":
        for path, values in self.sweep.params.items():
            problem = field_path_problem(path.split("."), type(self))
            if problem:
                raise ValueError(f"sweep.params: '{path}': {problem}")
        return self

    @model_validator(mode="after")
    def _engine_kernels(self) -> "Scenario":
        """A scenario that names its serving engine runs that engine's fused MoE kernels unless it says otherwise
        (`simulation.moe_kernels`: the executor's eager bookkeeping is moesim's own PyTorch executor's)."""
        if self.serving.engine and "moe_kernels" not in self.simulation.model_fields_set:
            self.simulation.moe_kernels = "fused"
        return self

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
        if self.serving.speculative_tokens and not model.num_mtp_modules:
            raise ValueError(
                f"serving.speculative_tokens: {model.name} has no multi-token prediction module to draft with; set "
                "speculative_tokens=0 (or model.num_mtp_modules for a model that has one)"
            )
        longest = most_tokens(self.serving.input_tokens) + most_tokens(self.serving.output_tokens)
        if "serving" in self.model_fields_set and longest > model.max_seq_len:
            raise ValueError(
                f"serving: requests of up to {longest:,} tokens (prompt and output) exceed {model.name}'s context "
                f"({model.max_seq_len:,}); shorten them or set model.max_seq_len"
            )
        stack, engine = self.stack.name, self.serving.engine
        if stack in ENGINES and engine is not None and engine != stack:
            raise ValueError(f"stack.name: {stack} and serving.engine: {engine} name two engines; keep one")
        sim = self.simulation
        if sim.comm_sms and (cluster.gpu.sms is None or sim.comm_sms >= cluster.gpu.sms):
            raise ValueError(
                f"simulation.comm_sms: {sim.comm_sms} SMs for communication, and {cluster.gpu.name} has "
                f"{cluster.gpu.sms or 'an unknown number of'} SMs; use fewer (DeepEP: 20 of 132) or set cluster.gpu.sms"
            )
        if sim.alltoall_overlap != "none" and self.workload.mode != "training":
            raise ValueError(
                "simulation.alltoall_overlap: modelled for training's 1F1B schedules; set alltoall_overlap=none "
                "(inference overlap belongs to the serving planner)"
            )
        if "mla_up_proj" in self.workload.recompute_modules and model.attention_type != "mla":
            raise ValueError(
                f"workload.recompute_modules: mla_up_proj recomputes MLA's up-projections and {model.name} has "
                f"{model.attention_type} attention; drop mla_up_proj (core_attn recomputes its attention)"
            )
        if par.pipeline_layers is not None:
            mtp = model.num_mtp_modules if self.workload.mode == "training" and self.workload.train_mtp else 0
            layers = model.num_layers + model.num_encoder_layers + (mtp if model.architecture == "decoder" else 0)
            if len(par.pipeline_layers) != par.pp_size or sum(par.pipeline_layers) != layers:
                raise ValueError(
                    f"parallelism.pipeline_layers: {par.pipeline_layers} must give each of the {par.pp_size} stages "
                    f"its layers, {layers} in all ({model.name}'s layers" + (f" and {mtp} MTP" if mtp else "") + ")"
                )
            if min(par.pipeline_layers) < 1:
                raise ValueError("parallelism.pipeline_layers: every stage needs at least one layer")
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
        slots = model.num_experts + self.simulation.redundant_experts
        if model.num_experts % par.ep_size and (not self.simulation.redundant_experts or slots % par.ep_size):
            raise ValueError(
                f"parallelism.ep_size: num_experts ({model.num_experts}) is not divisible by ep_size "
                f"({par.ep_size}); use an ep_size that divides {model.num_experts}, or redundant experts that fill "
                "every rank equally (DeepSeek: 256 + 32 redundant over EP 144)"
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
        if self.workload.precision.expert_weights and self.workload.mode == "training":
            raise ValueError(
                "workload.precision.expert_weights: 4-bit weight-only experts are an inference format; set it to "
                "null for training"
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
        accepted = rule_options(routing.strategy)
        unknown = [key for key in routing.options if key not in accepted]
        if unknown:
            raise ValueError(
                f"routing.options: '{routing.strategy}' has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(accepted) or 'none'}"
            )
        return self


def _expand_model(value: Any) -> Any:
    """A model preset (`NAME`, `{preset: NAME, ...}`) or a Hugging Face config.json (`path/config.json`,
    `{hf_config: PATH, field: value}`; a preset-like string naming a file counts too) as full `ModelSpec` fields."""
    reference = config_reference(value)
    if reference is None:
        return _expand_preset(value, model_preset, "model")
    key, path = reference
    if not isinstance(path, str):
        raise ScenarioError(f"model.hf_config: expected a path to a config.json, got {path!r}")
    overrides = {name: val for name, val in value.items() if name != key} if key else {}
    return {**hf_file_fields(path), **overrides}


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
        section = section_class(annotation)
        if section is not None:
            _reject_booleans(section, value, f"{prefix}{key}.")


# ---------------------------------------------------------------- paths and overrides
