"""The timeline with per-rank clocks: the same stage and pipeline times as the SimPy engine (the tests hold them
equal) without its processes, and without its slices; the fast mode's engine."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from moesim.sim.phase import Phase
from moesim.sim.timeline.orders import stage_items
from moesim.sim.timeline.spans import chunk_seconds


def run_pipeline_fast(
    forward_seconds: Iterable[float],
    backward_seconds: Iterable[float],
    micro_batches: int,
    p2p_seconds: float,
    chunks: int = 1,
    pair_seconds: Optional[Sequence[float]] = None,
) -> float:
    """The same schedule as `run_pipeline`, played with per-stage clocks instead of SimPy processes: each F/B starts
    when its stage is free and its neighbour's result has arrived (done + p2p). Equal to `run_pipeline`'s time (the
    tests check it); the fast mode's pipeline."""
    forward, backward = list(forward_seconds), list(backward_seconds)
    stages = len(forward)
    virtual = stages * chunks
    orders = stage_items(forward, backward, micro_batches, chunks, pair_seconds)
    done: dict[tuple[str, int, int], float] = {}
    clocks = [0.0] * stages
    position = [0] * stages
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for stage, order in enumerate(orders):
            while position[stage] < len(order):
                kind, micro, chunk, seconds, _ = order[position[stage]]
                here = chunk * stages + stage
                neighbour = here - 1 if kind == "F" else here + 1
                start = clocks[stage]
                if 0 <= neighbour < virtual:
                    arrived = done.get((kind, neighbour, micro))
                    if arrived is None:
                        break  # waits for another stage
                    start = max(start, arrived) + p2p_seconds
                clocks[stage] = start + seconds
                done[(kind, here, micro)] = clocks[stage]
                position[stage] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("pipeline schedule deadlocked")  # cannot happen for a 1F1B order
    return max(clocks)


def run_stage_fast(phases: list[Phase], ranks: int) -> tuple[float, dict[str, float]]:
    """The same timeline as `run_stage`, computed with per-rank clocks instead of SimPy processes.

    Equal to `run_stage` (the tests check it); used by the fast mode, and it returns the
    mean seconds per rank in each phase instead of slices.
    """
    clock = np.zeros(ranks)
    busy: dict[str, float] = {}

    def add(name: str, seconds: np.ndarray | float) -> None:
        busy[name] = busy.get(name, 0.0) + float(np.mean(seconds))

    def join(arrival: np.ndarray, seconds: float, name: str) -> float:
        start = float(arrival.max())
        add("wait", start - arrival)
        add(name, seconds)
        return start + seconds

    index = 0
    while index < len(phases):
        phase = phases[index]
        if phase.collective and phase.chunks > 1 and phase.name == "dispatch" and index + 2 < len(phases):
            dispatch, experts, combine = phases[index : index + 3]
            chunks = dispatch.chunks
            dispatch_s, combine_s = chunk_seconds(dispatch, chunks), chunk_seconds(combine, chunks)
            work_free = clock.copy()
            if dispatch.overlapped is not None:
                work_free = work_free + dispatch.overlapped.seconds
                add(dispatch.overlapped.name, dispatch.overlapped.seconds)
            comm_free = join(clock, dispatch_s, dispatch.name)
            dispatch_end = [comm_free]
            for _ in range(1, chunks):  # chunks, not tokens: the dispatches go back to back
                comm_free = join(np.full(ranks, comm_free), dispatch_s, dispatch.name)
                dispatch_end.append(comm_free)
            expert_end = []
            for chunk in range(chunks):
                start = np.maximum(dispatch_end[chunk], work_free)
                work_free = start + experts.seconds / chunks
                add(experts.name, experts.seconds / chunks)
                expert_end.append(work_free)
            for chunk in range(chunks):
                comm_free = join(np.maximum(comm_free, expert_end[chunk]), combine_s, combine.name)
            clock = np.maximum(np.full(ranks, comm_free), work_free)
            index += 3
            continue
        if phase.collective:
            end = join(clock, float(phase.seconds[0]), phase.name)
            if phase.overlapped is not None:
                add(phase.overlapped.name, phase.overlapped.seconds)
                clock = np.maximum(end, clock + phase.overlapped.seconds)
            else:
                clock = np.full(ranks, end)
        else:
            add(phase.name, phase.seconds)
            clock = clock + phase.seconds
        index += 1
    busy = {name: value for name, value in busy.items() if value > 0}
    return float(clock.max()), busy
