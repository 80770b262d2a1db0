"""What a timeline records and shares: a rank's spans of time, the busy time they add up to, and a chunked
collective's share of its phase."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.sim.phase import Phase


@dataclass(frozen=True)
class Slice:
    """A span of a rank's time: what it did from start to end (seconds)."""

    rank: int
    name: str
    layer: int
    start: float
    end: float
    pass_name: str  # forward / backward / pipeline


def busy_by_phase(slices: list[Slice], ranks: int) -> dict[str, float]:
    """Mean seconds per rank in each phase name (waits included as `wait`)."""
    totals: dict[str, float] = {}
    for piece in slices:
        totals[piece.name] = totals.get(piece.name, 0.0) + (piece.end - piece.start)
    return {name: seconds / ranks for name, seconds in totals.items()}


def chunk_seconds(phase: Phase, chunks: int) -> float:
    """One chunk of a collective: the bandwidth part splits, the latency does not."""
    latency = phase.detail.get("latency", 0.0)
    return (float(phase.seconds[0]) - latency) / chunks + latency
