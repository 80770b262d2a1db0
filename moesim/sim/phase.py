"""The values a stage's program is made of: a `Phase` (one step of a rank's program, compute or a collective) and a
`StageProgram` (a micro-batch's forward and backward phases on a stage), with the pure helpers every phase builder
shares (`moe_work`, the output head's time, relabelling a layer's phases, a layer's backward order)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from moesim.cost.model import CostModel
from moesim.cost.phase_features import PhaseWork
from moesim.routing.capacity import expert_capacity

BACKWARD_ATTENTION_FACTOR = 2.5
BACKWARD_MEMORY_FACTOR = 2.0
BACKWARD_SHUFFLE_FACTOR = 1.0
"""The permutation and un-permutation's backward over their forward where kernels are modelled: the same rows moved
the other way (measured on the H200 by moesim's executor: 0.93-1.02x, `validation/NVIDIA-H200`)."""


@dataclass
class Phase:
    """One step of a rank's program: compute (per-rank seconds) or a collective (network seconds)."""

    name: str
    layer: int
    seconds: np.ndarray  # [ranks] for compute; one value for a collective
    collective: bool = False
    overlapped: Optional["Phase"] = None  # compute that runs while this collective is in flight
    chunks: int = 1
    bytes_across_nodes: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass
class StageProgram:
    """Forward and backward phases of one micro-batch on a stage."""

    forward: list[Phase]
    backward: list[Phase]
    replayed_s: float = 0.0  # seconds of recomputed work in the backward (a rank's mean, waits not counted)


def moe_work(
    strategy: str,
    capacity_factor: Optional[float],
    tokens: float,
    hidden: int,
    experts: int,
    top_k: int,
    served: Optional[float] = None,
    padded: bool = False,
    **extra: Any,
) -> PhaseWork:
    """One rank's work in one MoE layer (`PhaseWork`): the permutation's slots per token, the rows it carries
    (tokens x slots, or experts x capacity when a capacity bounds them or every expert is padded to it; expert
    choice lays a token's slots over every expert, as the executor does on a GPU) and the served slots (default:
    every carried row)."""
    width, carried = top_k, float(tokens * top_k)
    if strategy == "expert_choice":
        width = experts
        carried = float(experts * (expert_capacity(int(tokens), experts, top_k, capacity_factor or 1.0) or 0))
    elif capacity_factor is not None:
        buffer = float(experts * (expert_capacity(int(tokens), experts, top_k, capacity_factor) or 0))
        carried = buffer if padded else min(carried, buffer)
    return PhaseWork(
        tokens,
        hidden,
        experts,
        top_k,
        slots=carried if served is None else served,
        carried_rows=carried,
        sort_keys=float(tokens * width),
        **extra,
    )


def output_head_seconds(cost: CostModel, rows: float, hidden: int, vocab: int) -> float:
    """The output head on `rows` rows: the vocabulary GEMM and a pass over the fp32 logits (read and written)."""
    return float(cost.gemm_seconds(rows, hidden, vocab)) + cost.memory_seconds(8 * rows * vocab)


def measured_or(measured: Optional[float], modelled: float) -> float:
    """A calibrated phase time where the profile has one, else the roofline's."""
    return modelled if measured is None else measured


def mean_seconds(phase: Phase) -> float:
    """A phase's time on a rank, on average, with the work it overlaps when that takes longer."""
    seconds = float(np.mean(phase.seconds))
    return max(seconds, float(np.mean(phase.overlapped.seconds))) if phase.overlapped is not None else seconds


def relabel(phases: list[Phase], index: int) -> list[Phase]:
    """Copies of a layer's phases (and the work they overlap) as layer `index`'s."""
    copies: dict[int, Phase] = {}

    def copy(phase: Phase) -> Phase:
        if id(phase) not in copies:
            overlapped = copy(phase.overlapped) if phase.overlapped is not None else None
            copies[id(phase)] = replace(phase, layer=index, overlapped=overlapped)
        return copies[id(phase)]

    return [copy(phase) for phase in phases]


def backward_order(layer_backward: list[Phase]) -> list[Phase]:
    """A layer's backward runs its forward pieces in reverse: MoE block first, attention last."""
    return layer_backward[::-1]
