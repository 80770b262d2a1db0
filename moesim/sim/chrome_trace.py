"""Export a simulated step as Chrome trace / Perfetto JSON (open in ui.perfetto.dev or chrome://tracing).

One track per rank of the busiest stage's expert-parallel group (forward and backward
of one micro-batch, phases as slices, waits included), and one track per pipeline
stage with its forward and backward passes over the micro-batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.sim.result import StepResult


def chrome_trace(result: StepResult) -> dict[str, Any]:
    """The trace as a Chrome trace-event document (times in microseconds)."""
    events: list[dict[str, Any]] = []
    processes = {"forward": 1, "backward": 1, "prefill": 1, "decode": 1, "pipeline": 2}
    events.append(
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "expert-parallel ranks (one micro-batch)"}}
    )
    events.append({"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "pipeline stages (1F1B)"}})
    named: set[tuple[int, int]] = set()
    for piece in result.slices:
        pid = processes.get(piece.pass_name, 1)
        if (pid, piece.rank) not in named:
            label = f"stage {piece.rank}" if pid == 2 else f"rank {piece.rank}"
            events.append({"ph": "M", "pid": pid, "tid": piece.rank, "name": "thread_name", "args": {"name": label}})
            named.add((pid, piece.rank))
        events.append(
            {
                "ph": "X",
                "pid": pid,
                "tid": piece.rank,
                "name": piece.name,
                "cat": piece.pass_name,
                "ts": piece.start * 1e6,
                "dur": (piece.end - piece.start) * 1e6,
                "args": {"layer": piece.layer, "pass": piece.pass_name},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"scenario": result.scenario, "step_time_s": result.step_time_s},
    }


def write_chrome_trace(result: StepResult, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(result)))
    return path
