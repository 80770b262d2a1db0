"""Timelines: how the simulator plays a stage's phases on its ranks and a pipeline's schedule on its stages.

Two engines play the same schedules to the same times (the tests hold them equal):

- `SIMPY` (`simpy_engine.py`): a SimPy process per rank, collectives as barriers that end after the
  slowest rank arrives, every span of every rank recorded (the Chrome trace and the report's plots read them);
- `CLOCKS` (`clocks.py`): per-rank clocks, the same arithmetic without processes and without spans: what a
  planner's thousands of layouts need.

`timeline_for(scenario)` chooses one, once: `simulation.timeline`, or by default SimPy with `network_mode: full`
and clocks with `fast` (the pairing the two modes have always had). The schedules themselves are typed orders
(`orders.py`: 1F1B, Megatron-Core's interleaved 1F1B, a forward paired with the backward after it), and DeepSeek's
DualPipe is its own player over its own op list (`dualpipe.py`, per-rank clocks in either mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from moesim.scenario import Scenario
from moesim.sim.phase import Phase
from moesim.sim.timeline.clocks import run_pipeline_fast, run_stage_fast
from moesim.sim.timeline.simpy_engine import run_pipeline, run_stage
from moesim.sim.timeline.spans import Slice, busy_by_phase


@dataclass(frozen=True)
class StageRun:
    """One pass over a stage: its seconds, each phase's mean busy seconds per rank (waits as `wait`), and the
    ranks' spans (none from the clocks)."""

    seconds: float
    busy: dict[str, float]
    slices: list[Slice] = field(default_factory=list)


@dataclass(frozen=True)
class Timeline:
    """An engine that plays a stage's phases and a pipeline's 1F1B schedule."""

    name: str
    """What the notes call it."""
    stage: Callable[..., StageRun]
    """(phases, ranks, pass name, start) -> one pass over a stage."""
    pipeline: Callable[..., tuple[float, list[Slice]]]
    """(forward, backward seconds per stage, micro-batches, p2p seconds, chunks, pair seconds) -> (seconds, spans)."""


def _simpy_stage(phases: list[Phase], ranks: int, pass_name: str, start: float = 0.0) -> StageRun:
    seconds, slices = run_stage(phases, ranks, pass_name, start=start)
    return StageRun(seconds, busy_by_phase(slices, ranks), slices)


def _clock_stage(phases: list[Phase], ranks: int, pass_name: str, start: float = 0.0) -> StageRun:
    seconds, busy = run_stage_fast(phases, ranks)
    return StageRun(seconds, busy)


def _clock_pipeline(*schedule: Any) -> tuple[float, list[Slice]]:
    return run_pipeline_fast(*schedule), []


SIMPY = Timeline("SimPy", _simpy_stage, run_pipeline)
"""SimPy processes per rank, with every span recorded."""
CLOCKS = Timeline("per-rank clocks", _clock_stage, _clock_pipeline)
"""Per-rank clocks: the same times, no spans."""

TIMELINES: dict[str, Timeline] = {"simpy": SIMPY, "clocks": CLOCKS}
"""The engines by the name `simulation.timeline` takes."""


def timeline_name(scenario: Scenario) -> str:
    """`simulation.timeline`, or the network mode's default: simpy with `full`, clocks with `fast`."""
    sim = scenario.simulation
    return sim.timeline or ("simpy" if sim.network_mode == "full" else "clocks")


def timeline_for(scenario: Scenario) -> Timeline:
    """The engine a scenario runs on (`timeline_name`)."""
    return TIMELINES[timeline_name(scenario)]


__all__ = ["CLOCKS", "SIMPY", "Slice", "StageRun", "TIMELINES", "Timeline", "timeline_for", "timeline_name"]
