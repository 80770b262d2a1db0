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

from typing import Generator, Iterable, Optional, Sequence

import simpy

from moesim.sim.phase import Phase
from moesim.sim.timeline.orders import Item, stage_items
from moesim.sim.timeline.spans import Slice, chunk_seconds


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


class _StageRun:
    """One pass of a micro-batch over a stage: a SimPy process per rank walking the phase list, the collectives as
    barriers shared by the ranks, every span of a rank's time recorded as a `Slice`."""

    def __init__(self, phases: list[Phase], ranks: int, pass_name: str, start: float) -> None:
        self.phases, self.ranks, self.pass_name = phases, ranks, pass_name
        self.env = simpy.Environment(initial_time=start)
        self.slices: list[Slice] = []
        self.barriers: dict[tuple[int, int], _Barrier] = {}

    def run(self) -> float:
        """Play every rank's program; the time the last rank finishes."""
        for rank in range(self.ranks):
            self.env.process(self.program(rank))
        self.env.run()
        return self.env.now

    def barrier(self, key: tuple[int, int], seconds: float) -> _Barrier:
        """The collective at `key` (phase index, chunk), made by the first rank to reach it."""
        if key not in self.barriers:
            self.barriers[key] = _Barrier(self.env, self.ranks, seconds)
        return self.barriers[key]

    def record(self, rank: int, name: str, layer: int, began: float) -> None:
        if self.env.now > began:
            self.slices.append(Slice(rank, name, layer, began, self.env.now, self.pass_name))

    def compute(self, rank: int, name: str, layer: int, seconds: float) -> Generator[simpy.Event, None, None]:
        began = self.env.now
        yield self.env.timeout(seconds)
        self.record(rank, name, layer, began)

    def collective(
        self, rank: int, phase: Phase, key: tuple[int, int], seconds: float
    ) -> Generator[simpy.Event, None, None]:
        """Join the collective; it ends `seconds` after the last rank arrives, the time before that a `wait`."""
        arrived = self.env.now
        gate = self.barrier(key, seconds)
        yield gate.join()
        if gate.all_arrived_at > arrived:
            self.slices.append(Slice(rank, "wait", phase.layer, arrived, gate.all_arrived_at, self.pass_name))
        self.slices.append(Slice(rank, phase.name, phase.layer, gate.all_arrived_at, self.env.now, self.pass_name))

    def chunked_moe(self, rank: int, index: int, block: list[Phase]) -> Generator[simpy.Event, None, None]:
        """Dispatch, experts and combine in chunks on two streams (communication, compute): chunk i's experts
        under chunk i+1's dispatch; shared experts on the compute stream."""
        env = self.env
        dispatch, experts, combine = block
        chunks = dispatch.chunks
        comm, work = simpy.Resource(env, 1), simpy.Resource(env, 1)

        def one_chunk(chunk: int) -> Generator[simpy.Event, None, None]:
            with comm.request() as turn:
                yield turn
                yield from self.collective(rank, dispatch, (index, chunk), chunk_seconds(dispatch, chunks))
            with work.request() as turn:
                yield turn
                yield from self.compute(rank, experts.name, experts.layer, float(experts.seconds[rank]) / chunks)
            with comm.request() as turn:
                yield turn
                yield from self.collective(rank, combine, (index + 2, chunk), chunk_seconds(combine, chunks))

        def shared_experts(phase: Phase) -> Generator[simpy.Event, None, None]:
            with work.request() as turn:  # shares the compute stream with the routed experts
                yield turn
                yield from self.compute(rank, phase.name, phase.layer, float(phase.seconds[rank]))

        jobs = [env.process(one_chunk(chunk)) for chunk in range(chunks)]
        if dispatch.overlapped is not None:
            jobs.append(env.process(shared_experts(dispatch.overlapped)))
        yield simpy.AllOf(env, jobs)

    def program(self, rank: int) -> Generator[simpy.Event, None, None]:
        """A rank's walk through the phases."""
        env, phases = self.env, self.phases
        index = 0
        while index < len(phases):
            phase = phases[index]
            if phase.collective and phase.chunks > 1 and phase.name == "dispatch" and index + 2 < len(phases):
                yield from self.chunked_moe(rank, index, phases[index : index + 3])
                index += 3
                continue
            if phase.collective:
                if phase.overlapped is not None:
                    overlapped = phase.overlapped
                    side = env.process(
                        self.compute(rank, overlapped.name, phase.layer, float(overlapped.seconds[rank]))
                    )
                    main = env.process(self.collective(rank, phase, (index, 0), float(phase.seconds[0])))
                    yield simpy.AllOf(env, [side, main])
                else:
                    yield from self.collective(rank, phase, (index, 0), float(phase.seconds[0]))
            else:
                yield from self.compute(rank, phase.name, phase.layer, float(phase.seconds[rank]))
            index += 1


def run_stage(phases: list[Phase], ranks: int, pass_name: str, start: float = 0.0) -> tuple[float, list[Slice]]:
    """Simulate one pass (forward or backward) of a micro-batch over a stage; returns (seconds, slices)."""
    stage = _StageRun(phases, ranks, pass_name, start)
    return stage.run() - start, stage.slices


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
