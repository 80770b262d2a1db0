"""Timing on a shared, noisy machine: repetitions spread over rounds, medians, and robust fits.

A CPU in a virtual machine has slow spells (a neighbour's burst, a scheduler tick that
wakes a waiting thread 4 ms late). Timing one benchmark 20 times in a row puts a whole
spell on that benchmark; `interleaved_samples` instead visits every benchmark once per
round, so a spell touches each a little and the median sees through it.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence, TypeVar

import numpy as np
import torch

Key = TypeVar("Key", bound=Hashable)


def median_seconds(work: Callable[[], Any], repeats: int, synchronize: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of `work` over `repeats` runs after one untimed run."""
    samples = interleaved_samples({0: work}, rounds=1, repeats=repeats, synchronize=synchronize)
    return statistics.median(samples[0])


def interleaved_samples(
    tasks: Mapping[Key, Callable[[], Any]],
    rounds: int,
    repeats: int,
    synchronize: Optional[Callable[[], None]] = None,
    device: Any = None,
) -> dict[Key, list[float]]:
    """Seconds of every run of every task: one untimed run each, then `rounds` passes of `repeats` runs per task.

    On a CUDA `device` each run is the device time between two events around it (read
    once per round), so the host's clock and its synchronisations stay out of the figure;
    and because a GPU that idled for a moment runs its next kernels at a lower clock, each
    round starts with a short burst of work and visits the tasks in a fresh order (a fixed
    shuffle), so no task is always the first after an idle spell.
    """
    for work in tasks.values():
        work()
    samples: dict[Key, list[float]] = {key: [] for key in tasks}
    on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda"
    order = list(tasks)
    shuffler = random.Random(0)
    for _ in range(rounds):
        events = []
        if on_gpu:
            _spin_up(device)
            shuffler.shuffle(order)
        for key in order:
            work = tasks[key]
            for _ in range(repeats):
                if on_gpu:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    work()
                    end.record()
                    events.append((key, start, end))
                    continue
                if synchronize:
                    synchronize()
                started = time.perf_counter()
                work()
                if synchronize:
                    synchronize()
                samples[key].append(time.perf_counter() - started)
        if events:
            events[-1][2].synchronize()
            for key, start, end in events:
                samples[key].append(start.elapsed_time(end) / 1e3)
    return samples


def seconds_in_stream(work: Callable[[], Any], device: Any, calls: int, spin_cycles: int = 40_000_000) -> float:
    """Seconds of one call of `work` run back to back, as a model's kernels run: on a CUDA `device`, `calls` calls
    queued by the host while a spin kernel of `spin_cycles` GPU cycles holds the GPU (so launches do not count),
    device time between two events over the calls; elsewhere, their wall time."""
    if getattr(device, "type", str(device)) != "cuda":
        started = time.perf_counter()
        for _ in range(calls):
            work()
        return (time.perf_counter() - started) / calls

    torch.cuda.synchronize(device)
    torch.cuda._sleep(spin_cycles)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def _spin_up(device: Any, seconds: float = 0.02) -> None:
    """Keep the GPU busy for about `seconds` so that its clocks are up when timing starts."""
    block = torch.ones(2048, 2048, device=device, dtype=torch.bfloat16)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        block @ block
    torch.cuda.synchronize(device)


def nonnegative_relative_fit(
    features: Sequence[Sequence[float]], seconds: Sequence[float], scale: Optional[Sequence[float]] = None
) -> list[float]:
    """Coefficients c >= 0 minimising sum(((features . c - t) / scale)^2), scale = t unless given.

    Relative, because the validation judges relative errors and host phases span 0.1-10 ms;
    non-negative, because no amount of work makes a phase faster. Features whose least-squares
    coefficient comes out negative are dropped one at a time and the rest refitted.
    """
    design = np.asarray(features, dtype=float)
    target = np.asarray(seconds, dtype=float)
    weights = 1.0 / np.maximum(np.asarray(target if scale is None else scale, dtype=float), 1e-12)
    active = list(range(design.shape[1]))
    coefficients = np.zeros(design.shape[1])
    while active:
        solution, *_ = np.linalg.lstsq(design[:, active] * weights[:, None], target * weights, rcond=None)
        if (solution >= 0).all():
            coefficients[active] = solution
            break
        active.pop(int(np.argmin(solution)))
    return [float(value) for value in coefficients]
