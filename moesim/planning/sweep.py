"""Sweeps: simulate every point of a grid, in a local process pool or on Ray, into the results store.

Each finished point is written at once; a sweep that is interrupted and started again
skips the points already stored, so none is lost or repeated. A point that cannot run
(it does not fit in memory, its parallelism is invalid) is stored with its error: it
is an answer too.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from moesim.errors import MoesimError, ScenarioError
from moesim.planning.grid import Point, grid
from moesim.planning.store import ResultsStore
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.step import simulate

SUMMARY_FIELDS = (
    "step_time_s",
    "tokens_per_s",
    "tokens_per_s_per_gpu",
    "mfu",
    "drop_rate",
    "load_imbalance",
    "bytes_across_nodes_per_step",
    "pipeline_bubble_s",
    "grad_allreduce_exposed_s",
    "prefill_s",
    "decode_step_s",
)


def sweep_id(document: dict[str, Any], swept: Sequence[str]) -> str:
    """Identity of a sweep: a hash of the base scenario (without its sweep section) and the swept paths."""
    base = {key: value for key, value in document.items() if key != "sweep"}
    text = json.dumps([base, sorted(swept)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_point(document: dict[str, Any], overrides: list[str]) -> tuple[Optional[dict[str, Any]], Optional[str], float]:
    """Simulate one point (in a worker): (flat result, error line, seconds)."""
    started = time.perf_counter()
    try:
        result = simulate(scenario_from_dict(document, overrides))
    except MoesimError as error:
        return None, str(error), time.perf_counter() - started
    row: dict[str, Any] = {name: getattr(result, name) for name in SUMMARY_FIELDS}
    row["memory_gb"] = result.memory["total_bytes"] / 1e9
    row.update({f"phase.{name}": seconds for name, seconds in result.phase_seconds.items()})
    return row, None, time.perf_counter() - started


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep call did."""

    sweep_id: str
    total_points: int
    already_done: int
    ran: int
    errors: int
    store: Path


def sweep_grid(
    document: dict, params: Optional[Mapping[str, Sequence[Any]]] = None
) -> tuple[Scenario, dict[str, Sequence[Any]], list[Point]]:
    """(the base scenario, the swept parameters, the grid's points), every value checked before any work starts: the
    base scenario validates, there is something to sweep, and each value makes a valid scenario somewhere."""
    base: Scenario = scenario_from_dict(document)
    swept = dict(params or base.sweep.params)
    if not swept:
        raise MoesimError("nothing to sweep: give --param PATH=V1,V2 or a sweep.params section")
    points = grid(swept)
    check_every_value(document, swept, points)
    return base, swept, points


def check_every_value(document: dict, params: Mapping[str, Sequence[Any]], points: Sequence[Point]) -> None:
    """Stop on a parameter value that no point of the grid can take (a typo, a wrong type): each value must make a
    valid scenario in at least one point; a value valid only with some others leaves the rest as failed points."""
    for name, values in params.items():
        for value in values:
            first: Optional[ScenarioError] = None
            for point in points:
                if (name, value) not in point.values:
                    continue
                try:
                    scenario_from_dict(document, point.overrides)
                    break
                except ScenarioError as error:
                    first = first or error
            else:
                if first is not None:
                    raise ScenarioError(f"--param {name}={value}: no point of the grid takes it ({first})")


def run_sweep(
    document: dict[str, Any],
    params: Optional[dict[str, Sequence[Any]]] = None,
    store_path: Optional[str | Path] = None,
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    use_ray: bool = False,
    max_points: Optional[int] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
    retry_failed: bool = False,
) -> SweepSummary:
    """Run the sweep of `document` (its `sweep:` section, or `params`), skipping stored points.

    `max_points` stops after that many new points (an interruption on purpose); `retry_failed` runs the points
    stored with an error again (a stored failure is otherwise final, like a stored result).
    `on_progress(done, total)` is called as points finish.
    """
    base, params, points = sweep_grid(document, params)
    identity = sweep_id(document, list(params))
    store = ResultsStore(store_path or base.sweep.store)
    try:
        if retry_failed:
            store.forget_failed(identity)
        done = store.done_keys(identity)
        remaining = [point for point in points if point.key not in done]
        already = len(points) - len(remaining)
        todo = remaining if max_points is None else remaining[:max_points]
        finished = already
        if on_progress:
            on_progress(finished, len(points))
        errors = 0

        def record(point: Point, outcome: tuple[Optional[dict[str, Any]], Optional[str], float]) -> None:
            nonlocal finished, errors
            result, error, seconds = outcome
            store.write(identity, point.key, dict(point.values), result, error, seconds)
            finished += 1
            errors += error is not None
            if on_progress:
                on_progress(finished, len(points))

        if use_ray or ray_address:
            _run_on_ray(document, todo, record, ray_address)
        else:
            _run_local(document, todo, record, workers or base.sweep.workers)
        return SweepSummary(identity, len(points), already, len(todo), errors, store.path)
    finally:
        store.close()


def _run_local(document: dict[str, Any], todo: list[Point], record: Callable[..., None], workers: int) -> None:
    if workers <= 1 or len(todo) <= 1:
        for point in todo:
            record(point, run_point(document, point.overrides))
        return
    # spawn, not fork: a forked copy of a process whose torch thread pool is running can deadlock
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_leave_interrupts_to_the_parent,
    )
    pending = {pool.submit(run_point, document, point.overrides): point for point in todo}
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record(pending.pop(future), future.result())
    except BaseException:  # Ctrl-C (or an error): what finished is stored; cancel the rest, stop the workers now
        for future in pending:
            future.cancel()
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _leave_interrupts_to_the_parent() -> None:
    """In a worker: Ctrl-C reaches the whole process group; the parent decides, and stops the workers itself.
    One thread per worker: the workers are the parallelism, and torch's own thread pool in each of them would
    oversubscribe the cores (a 2-worker sweep on 2 cores ran 9x slower than one process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    torch.set_num_threads(1)


def _run_on_ray(
    document: dict[str, Any], todo: list[Point], record: Callable[..., None], address: Optional[str]
) -> None:
    try:
        import ray  # optional: only --ray needs it
    except ModuleNotFoundError:
        raise MoesimError("--ray needs Ray: pip install 'moesim[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as error:  # Ray's, for an address
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MoesimError(
                f"--ray: cannot reach a Ray cluster at {address!r} ({first}); start one (ray start --head), "
                "give its address, or use --ray local"
            ) from None
    try:
        remote = ray.remote(run_point)
        pending = {remote.remote(document, point.overrides): point for point in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for reference in ready:
                record(pending.pop(reference), ray.get(reference))
    finally:
        if started_here:
            ray.shutdown()
