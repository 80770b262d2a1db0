"""The sections of a scenario file: cluster, parallelism, workload, routing, simulation and sweep, each
checked on its own (`Scenario` checks them against each other)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moesim.cluster.hardware import GpuSpec, gpu_preset
from moesim.cluster.network_profile import check_cluster_profile
from moesim.cluster.presets import cluster_preset
from moesim.cluster.topology import measured_inside
from moesim.errors import MoesimError, ScenarioError
from moesim.models.precision import Precision
from moesim.routing.names import RoutingStrategy


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
    scale_up_latency_us: Optional[float] = Field(
        None,
        ge=0,
        description="Per-message latency inside a node (microseconds); default 2, or NCCL's measured latency where "
        "`scale_up_collectives: measured` and tables measure the GPU (then it cannot be set).",
    )
    scale_up_collectives: Literal["measured", "datasheet"] = Field(
        "measured",
        description="NCCL inside a node: `measured` reads nccl-tests tables (latency and achieved rate by message "
        "size, moesim/cluster/measured/) where they measure the GPU (A100-80GB, H100-SXM, H200, B200, B300: up to 8 "
        "GPUs; GB200, GB300: up to 4; H800 reads the H100's) and a node no larger, scaled to "
        "scale_up_gb_per_s; `datasheet`: scale_up_gb_per_s and scale_up_latency_us as given.",
    )
    network_profile: Optional[str] = Field(
        None,
        description="Your fabric's NCCL measured inside a node (a JSON written by `moesim calibrate network` from "
        "nccl-tests output); replaces the shipped tables.",
    )
    deepep_kernels: Literal["measured", "link_rates"] = Field(
        "measured",
        description="DeepEP's all-to-alls: `measured` reads its kernels' measured floors, SM-limited rates and "
        "small-call efficiency (moesim/cluster/measured/deepep_*.json) where tables measure the GPU (H100-SXM, "
        "H800, H200); `link_rates`: the bytes at the links' rates.",
    )
    network_latency_us: float = Field(5.0, ge=0, description="Per-message latency across nodes (microseconds).")

    @model_validator(mode="before")
    @classmethod
    def _resolve_gpu(cls, data: Any) -> Any:
        if isinstance(data, dict) and "preset" in data:
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

    @model_validator(mode="after")
    def _measured_latency_is_not_also_set(self) -> "ClusterSpec":
        if (
            self.scale_up_latency_us is not None
            and self.scale_up_collectives == "measured"
            and measured_inside(self) is not None
        ):
            raise ScenarioError(
                f"cluster.scale_up_latency_us: NCCL's latency inside one {self.gpu.name} node is measured; "
                "set cluster.scale_up_collectives: datasheet to give your own"
            )
        check_cluster_profile(self)
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
    pipeline_layers: Optional[list[int]] = Field(
        None,
        description="Layers on each pipeline stage, first to last (Megatron's --decoder-first-pipeline-num-layers "
        "and --decoder-last-pipeline-num-layers, or its --pipeline-model-parallel-layout): pp_size counts adding "
        "up to the model's layers, the MTP modules counted on the last stage in training; default: as even as "
        "possible, earlier stages taking the remainder.",
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
    train_mtp: bool = Field(
        True,
        description="Training: run the model's multi-token-prediction modules (model.num_mtp_modules; DeepSeek-V3 "
        "trains its one, report 2.2; Megatron's --mtp-num-layers) on the last pipeline stage; false: the main model "
        "only.",
    )
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
    def _values_listed(cls, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in params.items():  # the paths themselves: `Scenario`'s check, which knows every field
            if not values:
                raise ValueError(f"sweep.params: '{path}' has no values; list at least one")
        return params
