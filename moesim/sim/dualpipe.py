"""DeepSeek-V3's DualPipe schedule, in the closed form of its technical report (section 3.2.1, Table 2).

DualPipe feeds micro-batches from both ends of the pipeline: rank r holds two model chunks, stage r of one
direction and stage pp - 1 - r of the other (two copies of the parameters), and runs a forward chunk of one
micro-batch together with a backward chunk of another, so that each one's all-to-alls run under the other's
compute. The report gives its bubble as (pp/2 - 1)(F&B + B - 3W), where F&B is an overlapped forward-and-backward
pair, B a backward chunk and W its weight-gradient part (1F1B: (pp - 1)(F + B)), and its activation memory as
pp + 1 micro-batches in flight. moesim takes F&B from `step.overlapped_pairs`, B from the stage programs and W from
the kernel models (`breakdown.weight_gradient_seconds`); a rank computes half the micro-batches through each of
its chunks. There is no event timeline for DualPipe: the step is this closed form, and the notes say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class DualPipeStep:
    pipeline_s: float  # the busiest rank's work plus the bubble
    bubble_s: float
    work_s: float  # the busiest rank's paired forward and backward chunks
    rank: int  # the busiest rank


def chunks_of(rank: int, stages: int) -> tuple[int, int]:
    """The two pipeline stages (model chunks) DualPipe places on `rank`."""
    return rank, stages - 1 - rank


def dualpipe_step(
    backward: Sequence[float], pairs: Sequence[float], weights: Sequence[float], micro_batches: int
) -> DualPipeStep:
    """The pipeline part of a DualPipe step from per-stage backward, paired and weight-gradient seconds."""
    stages = len(pairs)
    work = [micro_batches / 2 * sum(pairs[stage] for stage in chunks_of(rank, stages)) for rank in range(stages)]
    rank = max(range(stages), key=work.__getitem__)
    first, second = chunks_of(rank, stages)
    pair = (pairs[first] + pairs[second]) / 2
    back = (backward[first] + backward[second]) / 2
    weight = (weights[first] + weights[second]) / 2
    bubble = max(0.0, (stages / 2 - 1) * (pair + back - 3 * weight))
    return DualPipeStep(work[rank] + bubble, bubble, work[rank], rank)
