"""DeepSeek-V3's DualPipe schedule, played op by op with per-rank clocks.

DualPipe feeds micro-batches from both ends of the pipeline: rank r holds two model chunks, stage r of the
forward direction and stage pp - 1 - r of the reverse one (two copies of the parameters), and in its main phase
runs a forward chunk of one direction together with a backward chunk of the other, so that each one's
all-to-alls run under the other's compute (DeepSeek-V3 report, section 3.2.1). The order of a rank's operations
follows the eight steps of DeepSeek's reference implementation (github.com/deepseek-ai/DualPipe, `DualPipe.step`):
forwards of the first direction, forwards of both, backwards whose weight gradient is deferred ("zero bubble") and
the deferred weight gradients, the overlapped forward-backward main phase, then the backwards and weight gradients
that drain the pipeline. Each operation starts when its rank is free and its input has arrived from the
neighbouring rank of its direction (plus the point-to-point time), and hands its output on when it ends.

An overlapped pair takes the longer of its compute and its collectives (`orders.overlapped_seconds`, as
`step.overlapped_pairs` does, the compute stretched by the SMs communication holds); a backward with its weight
gradient deferred takes the backward less the weight-gradient GEMMs (`breakdown.weight_gradient_seconds`). The
report's closed-form bubble (pp/2 - 1)(F&B + B - 3W) is the cross-check the tests hold the schedule to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

from moesim.sim.timeline.orders import overlapped_seconds


@dataclass(frozen=True)
class Forward:
    """A forward chunk of a micro-batch in `direction` (0 enters at rank 0, 1 at the last rank)."""

    direction: int


@dataclass(frozen=True)
class Backward:
    """A backward chunk in `direction`; with `deferred_weight` its weight-gradient GEMMs wait for a later
    `WeightGradient` (zero bubble)."""

    direction: int
    deferred_weight: bool


@dataclass(frozen=True)
class WeightGradient:
    """The oldest deferred weight gradient of this rank."""


@dataclass(frozen=True)
class ForwardBackward:
    """A forward in one direction run together with a backward in the other, each one's all-to-alls under the
    other's compute."""

    forward_direction: int
    backward_direction: int


Op = Union[Forward, Backward, WeightGradient, ForwardBackward]


@dataclass(frozen=True)
class DualPipeStep:
    pipeline_s: float  # until the last rank finishes
    work_s: float  # the busiest rank's operations, back to back
    rank: int  # the busiest rank
    parts: dict[str, float] = field(default_factory=dict)
    """The busiest rank's work by operation, as DeepSeek's ISCA paper (Table 4) names them: "1F" (forward chunks
    alone), "1B" (backward chunks alone, their weight gradients where not deferred), "1W" (deferred weight
    gradients), "1F1B" (overlapped forward-backward pairs)."""


def chunks_of(rank: int, stages: int) -> tuple[int, int]:
    """The two pipeline stages (model chunks) DualPipe places on `rank`: one per direction."""
    return rank, stages - 1 - rank


def rank_ops(rank: int, ranks: int, micro_batches: int) -> list[Op]:
    """The rank's operations in DualPipe's order (directions: 0 enters at rank 0, 1 at the last rank)."""
    half_ranks, half_rank = ranks // 2, min(rank, ranks - 1 - rank)
    second_half = int(rank >= half_ranks)
    middle = rank in (half_ranks - 1, half_ranks)

    def d(phase: int) -> int:  # the reference code's phase 0/1 as a direction
        return phase ^ second_half

    ops: list[Op] = [Forward(d(0))] * ((half_ranks - half_rank - 1) * 2)  # step 1
    for _ in range(half_rank + 1):  # step 2
        ops += [Forward(d(0)), Forward(d(1))]
    for _ in range(half_ranks - half_rank - 1):  # step 3: zero-bubble backwards
        ops += [Backward(d(1), True), WeightGradient(), Forward(d(1))]
    for index in range(micro_batches // 2 - ranks + half_rank + 1):  # step 4: the overlapped main phase
        if index == 0 and middle:
            ops += [Forward(d(0)), Backward(d(1), False)]  # not overlapped, to shorten the bubble
        else:
            ops.append(ForwardBackward(d(0), d(1)))
        ops.append(ForwardBackward(d(1), d(0)))
    for _ in range(half_ranks - half_rank - 1):  # step 5
        ops += [Backward(d(1), False), ForwardBackward(d(1), d(0))]
    deferred = False
    for index in range(half_rank + 1):  # step 6: the second half of the chunks defer their weight gradients
        if index == (half_rank + 1) // 2 and half_rank % 2 == 1:
            deferred = True
        ops.append(Backward(d(1), deferred))
        if index == (half_rank + 1) // 2 and half_rank % 2 == 0:
            deferred = True
        ops.append(Backward(d(0), deferred))
    for _ in range(half_ranks - half_rank - 1):  # step 7
        ops += [WeightGradient(), Backward(d(0), True)]
    ops += [WeightGradient()] * (half_rank + 1)  # step 8
    return ops


def _parts(op: Op) -> list[tuple[str, int]]:
    """The (F or B, direction) passes an operation runs: what it waits for and hands on."""
    if isinstance(op, ForwardBackward):
        return [("F", op.forward_direction), ("B", op.backward_direction)]
    if isinstance(op, Forward):
        return [("F", op.direction)]
    if isinstance(op, Backward):
        return [("B", op.direction)]
    return []


def dualpipe_step(
    forward: Sequence[float],
    backward: Sequence[float],
    weight: Sequence[float],
    comm: Sequence[tuple[float, float]],
    micro_batches: int,
    p2p_seconds: float = 0.0,
    stretch: float = 1.0,
) -> DualPipeStep:
    """Play DualPipe with per-stage forward, backward (weight gradients included), weight-gradient and
    (forward, backward) collective seconds of one micro-batch; `micro_batches` (even, at least 2 x stages) split
    evenly between the two directions."""
    ranks = len(forward)

    def stage(rank: int, direction: int) -> int:
        return rank if direction == 0 else ranks - 1 - rank

    def pair(forward_stage: int, backward_stage: int) -> float:
        collectives = comm[forward_stage][0] + comm[backward_stage][1]
        compute = forward[forward_stage] + backward[backward_stage] - collectives
        return overlapped_seconds(compute, collectives, stretch)

    orders = [rank_ops(rank, ranks, micro_batches) for rank in range(ranks)]
    done: dict[tuple[str, int, int, int], float] = {}  # (F or B, direction, micro-batch, rank) -> when
    clocks, work = [0.0] * ranks, [0.0] * ranks
    by_kind = [dict.fromkeys(("1F", "1B", "1W", "1F1B"), 0.0) for _ in range(ranks)]
    position = [0] * ranks
    next_micro = [{("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0} for _ in range(ranks)]
    deferred: list[list[float]] = [[] for _ in range(ranks)]
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for rank, order in enumerate(orders):
            while position[rank] < len(order):
                op = order[position[rank]]
                parts = _parts(op)
                needs = []
                for kind, direction in parts:
                    micro = next_micro[rank][(kind, direction)]
                    step = 1 if direction == 0 else -1
                    neighbour = rank - step if kind == "F" else rank + step
                    if 0 <= neighbour < ranks:
                        needs.append(done.get((kind, direction, micro, neighbour)))
                if any(arrived is None for arrived in needs):
                    break  # waits for a neighbour
                start = max([clocks[rank], *[arrived + p2p_seconds for arrived in needs]])
                if isinstance(op, ForwardBackward):
                    kind_of = "1F1B"
                    seconds = pair(stage(rank, op.forward_direction), stage(rank, op.backward_direction))
                elif isinstance(op, Forward):
                    seconds, kind_of = forward[stage(rank, op.direction)], "1F"
                elif isinstance(op, Backward):
                    seconds, kind_of = backward[stage(rank, op.direction)], "1B"
                    if op.deferred_weight:  # its weight gradient runs later, in a WeightGradient
                        deferred[rank].append(weight[stage(rank, op.direction)])
                        seconds -= deferred[rank][-1]
                else:
                    seconds, kind_of = deferred[rank].pop(0), "1W"
                clocks[rank] = start + seconds
                work[rank] += seconds
                by_kind[rank][kind_of] += seconds
                for kind, direction in parts:
                    micro = next_micro[rank][(kind, direction)]
                    done[(kind, direction, micro, rank)] = clocks[rank]
                    next_micro[rank][(kind, direction)] = micro + 1
                position[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("DualPipe schedule deadlocked")  # cannot happen for DeepSeek's order
    busiest = max(range(ranks), key=work.__getitem__)
    return DualPipeStep(max(clocks), work[busiest], busiest, by_kind[busiest])
