"""How a deployment's requests are dealt to its engines (attention ranks), and how many one simulated engine serves.

A closed loop of `c` requests on `R` engines leaves `c mod R` engines one request more than the rest (on 8 GPUs of
data-parallel attention, concurrency 1, 8 and 15 are three different loads, not one). Engines whose ranks meet in
every MoE layer's all-to-all (an EP group of several attention ranks) go in lockstep: an iteration takes the
busiest engine's time, the others run theirs alongside (padded or idle), so the busiest engine's requests stand
for every request and the deployment serves `c` requests over their mean time in the system (Little's law).
Engines that share nothing (replicas; TP attention over the experts' GPUs) go at their own pace: the busier and
the lighter engines are simulated apart and their figures combined by how many engines hold each.

An engine serves at least `MIN_COUNTED` requests in the window its latencies are measured over, so that the p99
printed is a percentile of a hundred requests or more (the scenario's `serving.num_requests` is raised for that,
and the notes say so); a batch (as many requests as the concurrency, all there at once) and a closed loop measured as
a benchmark client measures it (`serving.measure: benchmark`) are served as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.scenario.serving import ServingSpec

MIN_COUNTED = 100
"""Requests an engine's latency percentiles are taken over at least (its p99 the slowest of a hundred)."""
WARM_UP_SHARE = 0.1
"""The first requests, while the batch fills, are not counted in the latencies."""


@dataclass(frozen=True)
class Deal:
    """A closed loop's requests over `ranks` engines: `busier` engines hold `lighter + 1`, the rest `lighter`."""

    ranks: int
    lighter: int
    busier: int

    @property
    def even(self) -> bool:
        return self.busier == 0

    @property
    def most(self) -> int:
        """Requests the busiest engine holds."""
        return self.lighter + (1 if self.busier else 0)

    def words(self) -> str:
        if self.even:
            return f"{self.lighter} requests an engine"
        light = f", {self.ranks - self.busier} engine(s) {self.lighter}" if self.lighter else " (the rest idle)"
        return f"dealt unevenly: {self.busier} engine(s) hold {self.most}{light}"


def deal(concurrency: int, ranks: int) -> Deal:
    """`concurrency` requests dealt over `ranks` engines."""
    lighter, busier = divmod(concurrency, ranks)
    return Deal(ranks, lighter, busier)


def is_batch(spec: ServingSpec) -> bool:
    """Every request there at once: a closed loop no longer than its concurrency."""
    return spec.arrival == "closed" and spec.num_requests <= spec.concurrency


def engine_requests(spec: ServingSpec, ranks: int, held: int) -> int:
    """Requests one engine serves: its share of `serving.num_requests`, raised so that its latencies are measured
    over `MIN_COUNTED` at least (a closed loop's window leaves out its first and its last `held` requests; an open
    stream its first `WARM_UP_SHARE`); a batch's share as it is."""
    share = max(1, spec.num_requests // ranks)
    if is_batch(spec) or (spec.arrival == "closed" and spec.measure == "benchmark"):  # as many as the client sends
        return max(share, held)
    if spec.arrival == "closed":
        return max(share, MIN_COUNTED + 2 * held)
    return max(share, math.ceil(MIN_COUNTED / (1 - WARM_UP_SHARE)))
