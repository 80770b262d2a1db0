"""What a served stream's figures are measured over: the load an open stream puts on a pool and the rate it is
served at, and the steady part of a closed loop.

A finite run fills before it serves at its full rate and drains after its last arrival. With Poisson arrivals
below a pool's capacity, what arrives is served: the throughput is the offered rate, and above the capacity it is
the capacity (`capacity.pool_capacity`), either way without the run's filling and draining. A closed loop serves
at its concurrency only from the first request finished (and replaced) to the last one released: throughput and
latencies are measured over that window, the requests released in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from moesim.scenario.serving import ServingSpec, mean_tokens
from moesim.serving.capacity import pool_capacity
from moesim.serving.dealing import WARM_UP_SHARE, Deal, deal

if TYPE_CHECKING:
    from moesim.serving.engine import EngineRun, Request
    from moesim.serving.iteration import IterationCost


@dataclass(frozen=True)
class Served:
    """What a pool serves, per second, and where that figure comes from."""

    requests_per_s: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    note: str


def pool_load(
    spec: ServingSpec, cost: "IterationCost", kv_capacity: int, ranks: int, phase: str, pool: str = "an engine"
) -> tuple[Optional[float], Optional[float], list[str]]:
    """The load the request rate puts on one engine of a pool and the requests/s the pool serves of it (None and
    None under a closed loop), and the note saying so."""
    if spec.arrival != "poisson" or spec.request_rate is None:
        return None, None, []
    capacity = pool_capacity(spec, cost.seconds, kv_capacity, phase)
    load = capacity.load(spec.request_rate / ranks)
    batch = (
        f"prompts filling its {spec.token_budget:,}-token budget"
        if phase == "prefill"
        else f"{capacity.sequences:,.0f} sequences decoding"
    )
    note = (
        f"load: {load:.0%} of what {pool} serves at its largest steady batch ({capacity.requests_per_s:,.2f} "
        f"requests/s, {batch}, the requests' mean lengths)"
    )
    return load, min(spec.request_rate, capacity.requests_per_s * ranks), [note]


def open_stream(spec: ServingSpec, requests_per_s: Optional[float], load: Optional[float]) -> Optional[Served]:
    """An open stream's throughput: the rate served (`pool_load`'s, the lowest over the pools), at the
    requests' mean lengths; None for a closed loop."""
    if requests_per_s is None or load is None:
        return None
    note = (
        "throughput: the offered rate, all of it served (load below 100%)"
        if load < 1
        else "throughput: what the busier pool serves at its capacity; the rest of the offered rate queues without "
        "end (the latencies grow with the run's length)"
    )
    output, inputs = mean_tokens(spec.output_tokens), mean_tokens(spec.input_tokens)
    return Served(requests_per_s, requests_per_s * output, requests_per_s * inputs, note)


def closed_loop_steady(
    requests: list["Request"], ranks: int, concurrency: int
) -> tuple[list["Request"], Optional[Served]]:
    """The requests a closed loop released and finished while it held its `concurrency` an engine (from the first
    finish to the last release) and what the `ranks` engines served then, by Little's law (the concurrency over
    those requests' mean time in the system: robust to the bursts in which requests of one length finish
    together), or (None) a run too short to get there."""
    first_finish = min(r.finish_s for r in requests if r.finish_s is not None)
    last_release = max(r.arrival_s for r in requests)
    # every request released from the first finish until the first one that outlasts the last release: all of
    # their time in the system while the loop was full, and none left out for being long
    outlasting = [r.arrival_s for r in requests if r.finish_s is None or r.finish_s > last_release]
    until = min(outlasting, default=last_release)
    released = [r for r in requests if first_finish <= r.arrival_s < until and r.finish_s is not None]
    if last_release <= first_finish or not released:
        return [], None
    released.sort(key=lambda r: r.arrival_s)
    per_engine = concurrency / (sum(r.finish_s - r.arrival_s for r in released) / len(released))  # type: ignore[operator]
    output = sum(r.output_tokens for r in released) / len(released)
    inputs = sum(r.input_tokens for r in released) / len(released)
    note = (
        f"closed loop: throughput (Little's law) and latencies over the {len(released)} requests an engine served "
        f"while it held its {concurrency} (from the first finish at {first_finish:.3g} s to the last release at "
        f"{last_release:.3g} s; filling and draining left out)"
    )
    return released, Served(per_engine * ranks, per_engine * output * ranks, per_engine * inputs * ranks, note)


def measured(
    spec: ServingSpec,
    run: "EngineRun",
    ranks: int,
    stream: Optional[Served],
    dealt: Optional[Deal] = None,
    lockstep: bool = True,
    lighter: bool = False,
) -> tuple[list, Served]:
    """The requests an engine's latencies are measured over and what the `ranks` engines serve: an open stream's
    rate served (`stream`), a closed loop's steady window, or, for a batch (every request there at once) or a
    closed loop too short to reach a steady window, the whole run less its first requests. A closed loop dealt
    unevenly (`dealt`; `serving.dealing`): engines in `lockstep` serve the whole concurrency at the simulated
    busiest engine's pace; otherwise `run` is the busier engines' (or, `lighter`, the lighter ones') and serves
    for them alone."""
    if stream is not None:
        return counted(run.requests), stream
    dealt = dealt or deal(spec.concurrency, ranks)
    scale = _engines_served(spec, dealt, ranks, lockstep, lighter)
    if spec.arrival == "closed" and spec.measure == "benchmark":
        note = (
            f"closed loop measured as a benchmark client does: all {len(run.requests)} requests an engine from a "
            "simultaneous start, the first wave included; throughput over the whole run"
        )
        return sorted(run.requests, key=lambda r: r.arrival_s), _over_whole_run(run, scale, note)
    per_engine = dealt.lighter if lighter else dealt.most
    steady, served = closed_loop_steady(run.requests, 1, per_engine) if spec.arrival == "closed" else ([], None)
    if served is not None:
        suffix = "" if dealt.even else f"; {dealt.words()}" + (", in lockstep" if lockstep else ", simulated apart")
        return steady, _scaled(served, scale, served.note + suffix)
    batch = spec.arrival == "closed" and per_engine >= len(run.requests)
    why = (
        "a batch (every request there from the start): throughput over the whole run, its makespan"
        if batch
        else f"throughput over the whole run, filling and draining included: {len(run.requests)} requests an engine "
        f"never kept it at its concurrency of {per_engine} (more serving.num_requests do)"
    )
    whole = _over_whole_run(run, ranks, f"{why}; latencies without the first {WARM_UP_SHARE:.0%}")
    return counted(run.requests), whole


def _engines_served(spec: ServingSpec, dealt: Deal, ranks: int, lockstep: bool, lighter: bool) -> float:
    """How many engines' worth of one simulated engine's throughput the deployment serves: all of them when the
    loop is dealt evenly; in lockstep, the whole concurrency at the busiest engine's pace; otherwise the engines of
    the simulated kind only (`pooled` adds the other kind's)."""
    if dealt.even:
        return float(ranks)
    if lockstep:
        return spec.concurrency / dealt.most
    return float(ranks - dealt.busier if lighter else dealt.busier)


def _scaled(served: Served, scale: float, note: str) -> Served:
    return Served(
        served.requests_per_s * scale, served.output_tokens_per_s * scale, served.input_tokens_per_s * scale, note
    )


def _over_whole_run(run: "EngineRun", scale: float, note: str) -> Served:
    """One engine's requests over its whole run (first release to last finish), times `scale` engines."""
    window = run.end_s
    requests = run.requests
    return Served(
        len(requests) / window * scale,
        sum(r.output_tokens for r in requests) / window * scale,
        sum(r.input_tokens for r in requests) / window * scale,
        note,
    )


def pooled(busier: tuple[list, Served], lighter: tuple[list, Served]) -> tuple[list, Served]:
    """The busier and the lighter engines together (`serving.dealing`): their throughputs added, their requests
    pooled in proportion to the requests each kind of engine serves (evenly spaced picks from each, as many in
    all as both counted)."""
    (busy, first), (light, second) = busier, lighter
    served = Served(
        first.requests_per_s + second.requests_per_s,
        first.output_tokens_per_s + second.output_tokens_per_s,
        first.input_tokens_per_s + second.input_tokens_per_s,
        first.note,
    )
    total = len(busy) + len(light)
    share = first.requests_per_s / served.requests_per_s if served.requests_per_s else 0.5
    picks = [(busy, round(total * share)), (light, total - round(total * share))]
    pooled = [group[int(i)] for group, count in picks if group and count for i in np.linspace(0, len(group) - 1, count)]
    return pooled, served


def counted(requests: list) -> list:  # type: ignore[type-arg]
    """The requests in arrival order, the warm-up share left out."""
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    return ordered[int(len(ordered) * WARM_UP_SHARE) :]
