"""The scenario's `simulation` section: how the simulator models the step (a module of its own for size)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from moesim.scenario.sections import _Section


class SimulationSpec(_Section):
    """How the simulator models the step: network mode, collective algorithms, overlap, sampling."""

    network_mode: Literal["full", "fast"] = Field(
        "full",
        description="`full`: max-min fair sharing of every link; `fast`: the most loaded link decides (a bound).",
    )
    timeline: Optional[Literal["simpy", "clocks"]] = Field(
        None,
        description="The timeline engine: `simpy` (SimPy processes per rank, every span recorded for the trace and "
        "plots) or `clocks` (per-rank clocks: the same times, faster, no spans). Default: simpy with network_mode "
        "full, clocks with fast.",
    )
    alltoall_algorithm: Literal["flat", "hierarchical", "deepep", "deepep_low_latency"] = Field(
        "flat",
        description="MoE all-to-all: flat (NCCL), hierarchical two-stage (Tutel/DeepSpeed), deepep (DeepEP's normal "
        "kernels: node-deduplicated RDMA, then NVLink) or deepep_low_latency (DeepEP's decode kernels: every "
        "token-expert copy its own message, NVLink inside a node, RDMA across).",
    )
    moe_kernels: Literal["eager", "fused"] = Field(
        "eager",
        description="eager: the router, permutation, un-permutation and expert bookkeeping as moesim's PyTorch "
        "executor runs them (its measured phase models); fused: a serving or training engine's fused kernels "
        "(TensorRT-LLM, SGLang, vLLM, Megatron's fused permute): one memory pass each and a fused gated activation "
        "(assumed, not measured), and each layer's residual adds fused into its RMSNorms; the grouped expert GEMMs "
        "stay as measured (CUTLASS kernels, as the engines').",
    )
    router_kernels: Optional[Literal["eager", "fused"]] = Field(
        None,
        description="The router alone, where a stack fuses its permutation but runs its router as PyTorch ops "
        "(DeepSeek's training profile: torch top-k and sigmoid kernels): eager prices the executor's measured "
        "router, fused one memory pass; null: as moe_kernels.",
    )
    allreduce_algorithm: Literal["auto", "ring", "hierarchical"] = Field(
        "auto", description="Data-parallel gradient all-reduce algorithm (auto = the faster)."
    )
    overlap_shared_experts: bool = Field(True, description="Shared experts compute while the dispatch is in flight.")
    overlap_grad_reduce: bool = Field(
        True,
        description="The gradients' all-reduce (ZeRO-1: their reduce-scatter) overlaps the last backward pass "
        "(Megatron's --overlap-grad-reduce).",
    )
    overlap_param_gather: bool = Field(
        False,
        description="ZeRO-1/2: the updated parameters' all-gather after the optimizer overlaps the next step's first "
        "forward (Megatron's --overlap-param-gather, opt-in there); false: it runs after the optimizer, exposed.",
    )
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
        "(DeepSeek-V3: 20 of the H800's 132 for DeepEP's normal kernels; its low-latency kernels hold none while "
        "their messages fly); 0 = copy engines or free. DeepEP's normal kernels run at the measured rate of this "
        "many SMs (0: DeepEP's default, 20).",
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
        description="Extra copies of the hottest experts; all copies placed as DeepSeek's EPLB does (equal copies a "
        "rank, heaviest on the least loaded); 0 = none.",
    )
    bias_warmup_steps: int = Field(
        40,
        ge=0,
        description="bias_balanced routing: steps of bias updates on synthetic scores before the simulated step.",
    )
    cost_profile: Optional[str] = Field(
        None, description="Measured compute profile (JSON) replacing the default curves."
    )
