"""The SimPy timeline: ranks of an expert-parallel group running a stage's phases, and the pipeline.

`run_stage` gives every rank of the group a SimPy process that walks the phase list;
a collective completes `network seconds` after the last rank arrives, so fast ranks
wait for slow ones (that wait is recorded as `wait` — the cost of load imbalance).
Work overlapped with a collective (shared experts during the dispatch) runs as a
parallel process and the rank continues when both are done. With `chunks > 1` the
dispatch, expert and combine phases of an MoE layer are split into chunks on two
streams per rank (communication and compute), so chunk i's experts overlap chunk
i+1's dispatch.

`run_pipeline` then plays the 1F1B schedule over stages and micro-batches with the
per-micro-batch forward and backward times of each stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterable, Optional, Sequence

import numpy as np
import simpy

from moesim.sim.phases import Phase


@dataclass(frozen=True)
class Slice:
    """A span of a rank's time: what it did from start to end (seconds)."""

    rank: int
    name: str
    layer: int
    start: float
    end: float
    pass_name: str  # forward / backward / pipeline


class _Barrier:
    """A collective: completes `seconds` after the last of `members` joins."""

    def __init__(self, env: simpy.Environment, members: int, seconds: float) -> None:
        self.env, self.members, self.seconds = env, members, seconds
        self.arrived = 0
        self.done = env.event()
        self.all_arrived_at = 0.0

    def join(self) -> simpy.Event:
        self.arrived += 1
        if self.arrived == self.members:
            self.all_arrived_at = self.env.now
            self.env.process(self._finish())
        return self.done

    def _finish(self) -> Generator[simpy.Event, None, None]:
        yield self.env.timeout(self.seconds)
        self.done.succeed()


def _chunk_seconds(phase: Phase, chunks: int) -> float:
    """One chunk of a collective: the bandwidth part splits, the latency does not."""
    latency = phase.detail.get("latency", 0.0)
    return (float(phase.seconds[0]) - latency) / chunks + latency


def run_stage(phases: list[Phase], ranks: int, pass_name: str, start: float = 0.0) -> tuple[float, list[Slice]]:
    """Simulate one pass (forward or backward) of a micro-batch over a stage; returns (seconds, slices)."""
    env = simpy.Environment(initial_time=start)
    slices: list[Slice] = []
    barriers: dict[tuple[int, int], _Barrier] = {}

    def barrier(key: tuple[int, int], seconds: float) -> _Barrier:
        if key not in barriers:
            barriers[key] = _Barrier(env, ranks, seconds)
        return barriers[key]

    def record(rank: int, name: str, layer: int, began: float) -> None:
        if env.now > began:
            slices.append(Slice(rank, name, layer, began, env.now, pass_name))

    def compute(rank: int, name: str, layer: int, seconds: float) -> Generator[simpy.Event, None, None]:
        began = env.now
        yield env.timeout(seconds)
        record(rank, name, layer, began)

    def collective(rank: int, phase: Phase, key: tuple[int, int], seconds: float) -> Generator[simpy.Event, None, None]:
        arrived = env.now
        gate = barrier(key, seconds)
        yield gate.join()
        if gate.all_arrived_at > arrived:
            slices.append(Slice(rank, "wait", phase.layer, arrived, gate.all_arrived_at, pass_name))
        slices.append(Slice(rank, phase.name, phase.layer, gate.all_arrived_at, env.now, pass_name))

    def chunked_moe(rank: int, index: int, block: list[Phase]) -> Generator[simpy.Event, None, None]:
        dispatch, experts, combine = block
        chunks = dispatch.chunks
        comm, work = simpy.Resource(env, 1), simpy.Resource(env, 1)

        def one_chunk(chunk: int) -> Generator[simpy.Event, None, None]:
            with comm.request() as turn:
                yield turn
                yield from collective(rank, dispatch, (index, chunk), _chunk_seconds(dispatch, chunks))
            with work.request() as turn:
                yield turn
                yield from compute(rank, experts.name, experts.layer, float(experts.seconds[rank]) / chunks)
            with comm.request() as turn:
                yield turn
                yield from collective(rank, combine, (index + 2, chunk), _chunk_seconds(combine, chunks))

        def shared_experts(phase: Phase) -> Generator[simpy.Event, None, None]:
            with work.request() as turn:  # shares the compute stream with the routed experts
                yield turn
                yield from compute(rank, phase.name, phase.layer, float(phase.seconds[rank]))

        jobs = [env.process(one_chunk(chunk)) for chunk in range(chunks)]
        if dispatch.overlapped is not None:
            jobs.append(env.process(shared_experts(dispatch.overlapped)))
        yield simpy.AllOf(env, jobs)

    def program(rank: int) -> Generator[simpy.Event, None, None]:
        index = 0
        while index < len(phases):
            phase = phases[index]
            if phase.collective and phase.chunks > 1 and phase.name == "dispatch" and index + 2 < len(phases):
                yield from chunked_moe(rank, index, phases[index : index + 3])
                index += 3
                continue
            if phase.collective:
                if phase.overlapped is not None:
                    side = env.process(
                        compute(rank, phase.overlapped.name, phase.layer, float(phase.overlapped.seconds[rank]))
                    )
                    main = env.process(collective(rank, phase, (index, 0), float(phase.seconds[0])))
                    yield simpy.AllOf(env, [side, main])
                else:
                    yield from collective(rank, phase, (index, 0), float(phase.seconds[0]))
            else:
                yield from compute(rank, phase.name, phase.layer, float(phase.seconds[rank]))
            index += 1

    for rank in range(ranks):
        env.process(program(rank))
    env.run()
    return env.now - start, slices


def one_f_one_b(stages: int, micro_batches: int) -> list[list[tuple[str, int]]]:
    """Each stage's order of work under 1F1B: warm-up forwards, then one forward one backward, then cool-down."""
    return [[(kind, micro) for kind, micro, _ in order] for order in interleaved_one_f_one_b(stages, micro_batches, 1)]


def interleaved_one_f_one_b(
    stages: int, micro_batches: int, chunks: int, extra_warmup: int = 0
) -> list[list[tuple[str, int, int]]]:
    """Each stage's order of (F or B, micro-batch, model chunk) under Megatron-Core's interleaved 1F1B.

    With `chunks` = v model chunks per stage the model is v x stages virtual stages, chunk c
    of stage s being virtual stage c x stages + s. The k-th forward of a stage runs chunk
    (k // stages) % v of micro-batch (k // (stages v)) stages + k % stages; backwards go
    through the chunks in reverse. Stage s first runs (stages - s - 1) x 2 + (v - 1) x stages
    forwards (stages - s - 1 for v = 1), then alternates one forward, one backward. `extra_warmup` more
    forwards shift the steady state so that every backward follows another micro-batch's forward, which the
    all-to-all overlap runs with it (one more micro-batch of activations in flight, as in Megatron-Core's
    combined 1F1B).
    """
    total = micro_batches * chunks

    def unit(k: int, backward: bool) -> tuple[int, int]:
        chunk = (k // stages) % chunks
        micro = (k // (stages * chunks)) * stages + k % stages if chunks > 1 else k
        return micro, (chunks - 1 - chunk if backward else chunk)

    orders = []
    for stage in range(stages):
        warmup = stages - stage - 1 if chunks == 1 else (stages - stage - 1) * 2 + (chunks - 1) * stages
        warmup = min(warmup + extra_warmup, total)
        order = [("F", *unit(k, False)) for k in range(warmup)]
        forward_next, backward_next = warmup, 0
        while backward_next < total:
            if forward_next < total:
                order.append(("F", *unit(forward_next, False)))
                forward_next += 1
            order.append(("B", *unit(backward_next, True)))
            backward_next += 1
        orders.append(order)
    return orders


Item = tuple[str, int, int, float, str]  # (F or B, micro-batch, chunk, seconds, label)


def paired(order: list[tuple[str, int, int]]) -> list[tuple]:
    """A stage's 1F1B order with each steady-state forward and the backward after it (of another micro-batch)
    merged into one ("FB", (micro, chunk), (micro, chunk)) unit that runs them together, one's communication
    under the other's compute."""
    units: list[tuple] = []
    index = 0
    while index < len(order):
        item = order[index]
        following = order[index + 1] if index + 1 < len(order) else None
        if item[0] == "F" and following is not None and following[0] == "B" and following[1] != item[1]:
            units.append(("FB", item[1:], following[1:]))
            index += 2
        else:
            units.append(item)
            index += 1
    return units


def overlapped_seconds(compute: float, collectives: float, stretch: float = 1.0) -> float:
    """A forward and a backward run together: each one's collectives under the other's compute, so the pair takes
    the longer of the two streams, the compute that runs under communication stretched by `stretch` (the SMs the
    communication kernels hold)."""
    return max(compute + min(compute, collectives) * (stretch - 1), collectives)


def pair_split(forward: float, backward: float, pair: float) -> tuple[float, float]:
    """A forward-backward pair of `pair` seconds as two halves: the forward's (its share of the pair's work; its
    result leaves when it ends) and the backward's (which needs the next stage's gradient before it starts)."""
    forward_part = pair * forward / (forward + backward) if forward + backward > 0 else 0.0
    return forward_part, pair - forward_part


def stage_items(
    forward: Sequence[float],
    backward: Sequence[float],
    micro_batches: int,
    chunks: int,
    pair: Optional[Sequence[float]] = None,
) -> list[list[Item]]:
    """Each stage's F and B in schedule order with their durations. With `pair` (seconds per stage), the
    all-to-all overlap: one more warm-up forward, and each steady-state forward and the backward after it run as
    a pair whose two halves take `pair_split` of the pair's time."""
    stages = len(forward)
    items = []
    orders = interleaved_one_f_one_b(stages, micro_batches, chunks, 1 if pair else 0)
    for stage, order in enumerate(orders):
        stage_list: list[Item] = []
        for unit in paired(order) if pair else order:
            if unit[0] == "FB":
                halves = pair_split(forward[stage], backward[stage], pair[stage])  # type: ignore[index]
                label = f"F{unit[1][0]}+B{unit[2][0]}"
                stage_list.append(("F", unit[1][0], unit[1][1], halves[0], label))
                stage_list.append(("B", unit[2][0], unit[2][1], halves[1], label))
            else:
                kind, micro, chunk = unit
                seconds = (forward[stage] if kind == "F" else backward[stage]) / chunks
                stage_list.append((kind, micro, chunk, seconds, f"{kind}{micro}" + (f".{chunk}" if chunks > 1 else "")))
        items.append(stage_list)
    return items


def run_pipeline(
    forward_seconds: Iterable[float],
    backward_seconds: Iterable[float],
    micro_batches: int,
    p2p_seconds: float,
    chunks: int = 1,
    pair_seconds: Optional[Sequence[float]] = None,
) -> tuple[float, list[Slice]]:
    """Play the (interleaved) 1F1B schedule; returns (seconds until the last backward finishes, one slice per F/B).

    With `chunks` > 1 each stage's layers are split evenly over its chunks (a chunk takes 1/chunks of the stage's
    time) and every chunk boundary is a point-to-point transfer. With `pair_seconds`, the all-to-all overlap
    (`stage_items`)."""
    forward, backward = list(forward_seconds), list(backward_seconds)
    stages = len(forward)
    virtual = stages * chunks
    env = simpy.Environment()
    done = {(kind, v, m): env.event() for kind in "FB" for v in range(virtual) for m in range(micro_batches)}
    slices: list[Slice] = []

    def stage_process(stage: int, items: list[Item]) -> Generator[simpy.Event, None, None]:
        for kind, micro, chunk, seconds, label in items:
            here = chunk * stages + stage  # this chunk's virtual stage
            neighbour = here - 1 if kind == "F" else here + 1
            if 0 <= neighbour < virtual:
                yield done[(kind, neighbour, micro)]
                yield env.timeout(p2p_seconds)
            began = env.now
            yield env.timeout(seconds)
            done[(kind, here, micro)].succeed()
            slices.append(Slice(stage, label, -1, began, env.now, "pipeline"))

    for stage, items in enumerate(stage_items(forward, backward, micro_batches, chunks, pair_seconds)):
        env.process(stage_process(stage, items))
    env.run()
    return env.now, slices


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


def busy_by_phase(slices: list[Slice], ranks: int) -> dict[str, float]:
    """Mean seconds per rank in each phase name (waits included as `wait`)."""
    totals: dict[str, float] = {}
    for piece in slices:
        totals[piece.name] = totals.get(piece.name, 0.0) + (piece.end - piece.start)
    return {name: seconds / ranks for name, seconds in totals.items()}


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
            dispatch_s, combine_s = _chunk_seconds(dispatch, chunks), _chunk_seconds(combine, chunks)
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
