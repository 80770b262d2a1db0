"""Flow-level network solver: how long a set of concurrent transfers takes.

A collective is a set of flows (source, destination, bytes) over the topology's links.
Two modes:

* `full` — fluid max-min fair sharing: at every moment each link's capacity is shared
  max-min fairly by the flows crossing it (progressive filling); when the next flow
  finishes, rates are recomputed. This is how TCP-like or credit-based transports share
  a fabric in steady state, at flow granularity (no packets).
* `fast` — the bottleneck bound: the most loaded link decides, time = max over links
  of bytes on the link / capacity. Exact when one link limits everything (uniform
  all-to-all); a lower bound otherwise.

A collective also pays one per-message latency (the network's when any flow leaves a
node). All arithmetic is numpy over flows and links; the only Python loops are over
rounds of the filling algorithm and over completion events.

NCCL's all-to-all (`nccl=True`) on a GPU whose nccl-tests tables moesim carries runs its
scale-up links at the rate NCCL achieved for that per-peer message size on that many
GPUs of a node, and pays NCCL's measured latency when no flow leaves the node
(`moesim.cluster.collective_tables`); other kernels (DeepEP's) keep the link rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cluster.topology import Topology

_RELATIVE_TOLERANCE = 1e-9
TIME_RESOLUTION = 200
"""Rates are recomputed at least every 1/200 of the collective's lower-bound time rather than at
every single completion (thousands in a skewed all-to-all): flows that finish inside a step
finish at their exact time, the capacity they free is shared out at the next step. The
result is within about 1% of exact event-by-event sharing (checked in the tests) and never
below the bottleneck bound."""


@dataclass(frozen=True)
class FlowSet:
    """Flows with their links in coordinate form: incidence[k] = (flow_of[k], link_of[k])."""

    num_flows: int
    flow_of: np.ndarray
    link_of: np.ndarray
    capacity: np.ndarray


def max_min_rates(flows: FlowSet, active: np.ndarray) -> np.ndarray:
    """Max-min fair rate (bytes/s) of each active flow; progressive filling, vectorised."""
    rates = np.zeros(flows.num_flows)
    remaining = flows.capacity.astype(float).copy()
    unfrozen = active.copy()
    num_links = remaining.size
    while unfrozen.any():
        on = unfrozen[flows.flow_of]
        counts = np.bincount(flows.link_of[on], minlength=num_links)
        used = counts > 0
        if not used.any():  # flows that cross no link (should not happen): no limit
            rates[unfrozen] = np.inf
            break
        share = np.full(num_links, np.inf)
        share[used] = remaining[used] / counts[used]
        increment = share.min()
        rates[unfrozen] += increment
        remaining[used] -= increment * counts[used]
        saturated = used & (share <= increment * (1 + _RELATIVE_TOLERANCE))
        hit = np.zeros(flows.num_flows, dtype=bool)
        hit[flows.flow_of[on & saturated[flows.link_of]]] = True
        unfrozen &= ~hit
    return rates


def fluid_completion_times(flows: FlowSet, sizes: np.ndarray, resolution: int = TIME_RESOLUTION) -> np.ndarray:
    """When each flow finishes under max-min fair sharing, all starting at time 0 (seconds).

    `resolution` sets the time step as a fraction of the bottleneck bound (0 = recompute
    rates at every completion: exact, slower).
    """
    remaining = sizes.astype(float).copy()
    finish = np.zeros(flows.num_flows)
    active = remaining > 0
    grid = bottleneck_time(flows, sizes) / resolution if resolution else 0.0
    now = 0.0
    while active.any():
        rates = max_min_rates(flows, active)
        with np.errstate(divide="ignore", invalid="ignore"):
            until_done = np.where(active, remaining / rates, np.inf)
        step = max(float(np.min(until_done)), grid)
        done = active & (
            (until_done <= step) | (remaining - rates * step <= _RELATIVE_TOLERANCE * np.maximum(sizes, 1.0))
        )
        finish[done] = now + np.minimum(until_done[done], step)
        still = active & ~done
        remaining[still] -= rates[still] * step
        active = still
        now += step
    return finish


def bottleneck_time(flows: FlowSet, sizes: np.ndarray) -> float:
    """Time by the most loaded link: max over links of bytes crossing it / capacity."""
    if flows.flow_of.size == 0:
        return 0.0
    load = np.bincount(flows.link_of, weights=sizes[flows.flow_of], minlength=flows.capacity.size)
    return float(np.max(load / flows.capacity))


@dataclass(frozen=True)
class TransferResult:
    """Outcome of one collective transfer."""

    seconds: float
    bytes_total: float
    bytes_across_nodes: float
    latency_seconds: float


def transfer_time(
    topology: Topology,
    ranks: np.ndarray,
    byte_matrix: np.ndarray,
    mode: str = "full",
    nccl: bool = False,
) -> TransferResult:
    """Time for every rank i to send byte_matrix[i, j] to rank j at once (an alltoallv).

    `ranks` are the global ranks the matrix rows and columns refer to; the diagonal
    (data a rank keeps) costs nothing. `nccl`: the transfer is NCCL's all-to-all, whose
    measured rate and latency inside a node apply where the topology carries them.
    """
    if mode not in ("full", "fast"):
        raise ValueError(f"network mode must be 'full' or 'fast', got {mode!r}")
    ranks = np.asarray(ranks, np.int64)
    matrix = np.asarray(byte_matrix, dtype=float)
    off_diagonal = ~np.eye(len(ranks), dtype=bool)
    src_index, dst_index = np.nonzero((matrix > 0) & off_diagonal)
    sizes = matrix[src_index, dst_index]
    sources, destinations = ranks[src_index], ranks[dst_index]
    across = float(sizes[topology.node_of(sources) != topology.node_of(destinations)].sum())
    if sizes.size == 0:
        return TransferResult(0.0, 0.0, 0.0, 0.0)
    flow_of, link_of = topology.flow_links(sources, destinations)
    capacity = topology.link_capacity(ranks)
    latency = topology.latency(sources, destinations)
    local = topology.node_of(sources) == topology.node_of(destinations)
    if nccl and topology.collectives is not None and local.any():
        peers = int(np.bincount(topology.node_of(ranks)).max())  # the group's GPUs in its fullest node
        size = float(sizes[local].mean()) * peers  # nccl-tests' size: a rank's per-peer message x the peers
        rate = topology.collectives.bus_rate("alltoall", peers, size, topology.scale_up_bytes_per_s)
        capacity[topology.scale_up_links] = rate
        if local.all():
            latency = topology.collectives.curves["alltoall"].latency(peers)
    flows = FlowSet(sizes.size, flow_of, link_of, capacity)
    if mode == "fast":
        seconds = bottleneck_time(flows, sizes)
    else:
        seconds = float(fluid_completion_times(flows, sizes).max())
    return TransferResult(seconds + latency, float(sizes.sum()), across, latency)
