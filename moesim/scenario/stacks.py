"""The software stack a scenario runs on: a name that sets the simulator's behaviours the way that stack runs.

A training framework or a serving engine decides things moesim otherwise asks for one by one:
whether the router and the permutations are fused kernels or eager PyTorch, which all-to-all
carries the tokens and how many SMs it holds, whether shared experts overlap the dispatch, which
engine's measured kernels price a served iteration. `stack.name` sets them at once, each with the
source it comes from, so that a user says which stack they run and `moesim check` shows every
setting it made:

- a setting written in the scenario (or given with `--set`) wins over the stack's;
- the stack's wins over moesim's own default;
- a serving engine named twice (`stack.name` and `serving.engine`) must agree (an error otherwise).

Not set by any stack yet (the simulator has no mechanism for them, and a stack does not pretend
otherwise): CUDA graphs and the host's launch cost, the optimizer's sharding (`parallelism.zero_stage`
is a layout choice).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import Field

from moesim.scenario.sections import _Section

StackName = Literal["megatron-core", "deepseek-v3", "eager-pytorch", "trtllm", "sglang", "vllm"]
ENGINES = ("trtllm", "sglang", "vllm")
"""Stacks that are serving engines: they also name `serving.engine`."""

MEGATRON = "Megatron-LM megatron/core/transformer/moe/README.md, Quick Start"
DEEPSEEK = "DeepSeek-V3 technical report (arXiv 2412.19437), section 3.2"
ENGINE_KERNELS = "the engines run fused MoE kernels (router, permutation, gated activation), not eager PyTorch"


@dataclass(frozen=True)
class StackDefault:
    """One setting a stack makes: a dotted scenario path, its value, and where the value comes from."""

    path: str
    value: Any
    source: str


STACKS: dict[str, tuple[StackDefault, ...]] = {
    "megatron-core": (
        StackDefault("simulation.moe_kernels", "fused", f"{MEGATRON}: --moe-permute-fusion, --moe-grouped-gemm"),
        StackDefault("simulation.alltoall_algorithm", "flat", f"{MEGATRON}: --moe-token-dispatcher-type alltoall"),
        StackDefault(
            "simulation.overlap_shared_experts",
            False,
            "Megatron-LM's MoE README: --moe-shared-expert-overlap is an opt-in (TransformerConfig default False)",
        ),
        StackDefault(
            "simulation.alltoall_overlap",
            "none",
            "Megatron-Core's TransformerConfig: overlap_moe_expert_parallel_comm defaults to False",
        ),
        StackDefault(
            "workload.precision.fp8_cast_kernels",
            "transformer-engine",
            "Megatron-Core runs FP8 through Transformer Engine (megatron/core/extensions/transformer_engine.py)",
        ),
        StackDefault("workload.precision.fp8_recipe", "delayed", "Megatron-LM arguments.py: --fp8-recipe default"),
    ),
    "deepseek-v3": (
        StackDefault("simulation.alltoall_algorithm", "deepep", f"{DEEPSEEK}: DeepEP's node-limited dispatch"),
        StackDefault("simulation.comm_sms", 20, f"{DEEPSEEK}: 20 of the H800's 132 SMs for communication"),
        StackDefault(
            "simulation.moe_kernels",
            "fused",
            f"{DEEPSEEK}: DeepEP permutes in its dispatch, un-permutes in its combine",
        ),
        StackDefault(
            "simulation.router_kernels",
            "eager",
            "DeepSeek's training profile (deepseek-ai/profile-data train.json): its router runs PyTorch's top-k "
            "(sbtopk::gatherTopK) and sigmoid kernels",
        ),
        StackDefault(
            "workload.precision.fp8_cast_kernels",
            "deepseek",
            "DeepSeek's training profile (deepseek-ai/profile-data train.json): its own cast kernels",
        ),
        StackDefault("workload.precision.fp8_recipe", "blockwise", "DeepSeek-V3 technical report, section 3.3.2"),
    ),
    "eager-pytorch": (
        StackDefault("simulation.moe_kernels", "eager", "moesim's PyTorch executor, measured (moesim/executor/)"),
        StackDefault("simulation.alltoall_algorithm", "flat", "torch.distributed.all_to_all_single (NCCL)"),
        StackDefault("simulation.alltoall_overlap", "none", "one stream: nothing overlaps across micro-batches"),
    ),
    **{
        engine: (
            StackDefault("serving.engine", engine, "the engine named"),
            StackDefault("simulation.moe_kernels", "fused", ENGINE_KERNELS),
        )
        for engine in ENGINES
    },
}
"""Every stack's settings, with their sources."""


class StackSpec(_Section):
    """The software stack the scenario runs on (`moesim.scenario.stacks`)."""

    name: Optional[StackName] = Field(
        None,
        description="Training framework or serving engine whose defaults to use (megatron-core, deepseek-v3, "
        "eager-pytorch, trtllm, sglang, vllm): it sets the simulator's kernels, all-to-all and overlap the way that "
        "stack runs them, each with its source (`moesim check` lists them); settings written in the scenario win. "
        "null: moesim's own defaults.",
    )


def _lookup(document: dict, path: str) -> tuple[bool, Any]:
    """(whether `path` is written in the document, its value)."""
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_stack(document: dict) -> dict:
    """The document with its stack's settings filled in where it writes none (a copy; unchanged without a stack,
    or with a name that is not a stack: the scenario's own check reports that)."""
    stack = document.get("stack")
    name = stack.get("name") if isinstance(stack, dict) else None
    if not isinstance(name, str) or name not in STACKS:
        return document
    filled = copy.deepcopy(document)
    for default in STACKS[name]:
        written, _ = _lookup(filled, default.path)
        *sections, key = default.path.split(".")
        if sections[0] == "serving" and not isinstance(filled.get("serving"), dict):
            continue  # an engine's tables price served iterations: a scenario without a serving section has none
        node: Any = filled
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node, dict) else None
        if written or not isinstance(node, dict):
            continue
        node[key] = default.value
    return filled


def stack_settings(scenario: Any) -> list[tuple[StackDefault, Any]]:
    """Each setting of the scenario's stack with the value the scenario runs at (the same where the stack's default
    took effect or the scenario wrote the same; another where the scenario's own setting won)."""
    name = scenario.stack.name
    if name is None:
        return []
    values = scenario.model_dump(mode="json")
    return [(default, _lookup(values, default.path)[1]) for default in STACKS[name]]


def stack_lines(scenario: Any) -> list[str]:
    """`moesim check`'s account of the stack: a line a setting, and what no stack sets yet."""
    settings = stack_settings(scenario)
    if not settings:
        return []
    lines = [f"stack {scenario.stack.name}:"]
    for default, value in settings:
        lines.append(f"  {default.path} = {value!r}")
        if value == default.value:
            lines.append(f"    from the stack: {default.source}")
        else:
            lines.append(f"    set in the scenario over the stack's {default.value!r}")
    lines.append("  not set by a stack (no mechanism yet): CUDA graphs and host launch cost")
    return lines
