"""`PhaseClock`: how long each phase of a layer takes, on the CPU or on a GPU.

On the CPU a phase is the host time between its start and its end. On a GPU the host
only queues work, so a phase is the device time between two CUDA events recorded on the
stream around it; the events are read once, after the whole pass (`read`), so timing
adds no synchronisation between phases and the layer runs as it would untimed: a phase
that the host launches more slowly than the device runs it shows the gap, as a real
layer would.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch


class PhaseClock:
    """Named phases of one pass; `read()` returns seconds per name (summed when a name repeats) and starts over."""

    def __init__(self, device: torch.device | str) -> None:
        self.on_gpu = torch.device(device).type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []

    def _now(self) -> Any:
        if self.on_gpu:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self._now()
        yield
        self.marks.append((name, started, self._now()))

    def read(self) -> dict[str, float]:
        """Seconds of every phase since the last read, and 'span': from the first start to the last end."""
        if not self.marks:
            return {}
        if self.on_gpu:
            self.marks[-1][2].synchronize()

            def seconds(start: Any, end: Any) -> float:
                return start.elapsed_time(end) / 1e3
        else:

            def seconds(start: Any, end: Any) -> float:
                return end - start

        result: dict[str, float] = {}
        for name, start, end in self.marks:
            result[name] = result.get(name, 0.0) + seconds(start, end)
        result["span"] = seconds(self.marks[0][1], self.marks[-1][2])  # phases run one after another
        self.marks = []
        return result
