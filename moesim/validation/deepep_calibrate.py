"""DeepEP's kernels recalibrated to a user's cluster from the output of DeepEP's own tests (issue 28).

`moesim calibrate network` reads, beside nccl-tests output, the stdout of DeepEP's `tests/test_internode.py` (its
`[tuning] Best dispatch (FP8)` and `Best combine` lines: notify and transmit times at the tuned chunk sizes) and
`tests/test_low_latency.py` (each rank's `Dispatch bandwidth ... avg_t` line). Each point keeps the shipped form
(`moesim.cluster.deepep_kernels`) and moves the one rate the point measures: at that node count the RDMA rate a NIC
(or, where the NVLink stage binds, the rate a SM) until the transmit time is the measured one, the notify line
through the measured notify time; the low-latency floor at that EP size through the measured time. What a single
point cannot separate (floors of the normal kernels, the small-call efficiency) stays the shipped fit's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from moesim.cluster.deepep_kernels import DeepEPKernels, NormalFit
from moesim.validation.deepep_fit import HIDDEN, low_latency_volumes, normal_volumes

_CONFIG = re.compile(r"\[config\] num_tokens=(\d+), hidden=(\d+)")
_BEST = re.compile(
    r"\[tuning\] Best (dispatch \(FP8\)|combine): SMs (\d+), NVL chunk \d+, RDMA chunk \d+[:,] ([\d.]+) \+ ([\d.]+) us"
)
_LOW = re.compile(
    r"\[rank (\d+)\] Dispatch bandwidth: [\d.]+ GB/s, avg_t=([\d.]+) us \| Combine bandwidth: [\d.]+ "
    r"GB/s, avg_t=([\d.]+) us"
)
LOW_LATENCY_TOKENS = 128
"""DeepEP's low-latency test prints no shape: its defaults (128 tokens a rank, hidden 7,168, top-8)."""


@dataclass(frozen=True)
class DeepEPPoint:
    kernel: str  # normal or low_latency
    direction: str
    ranks: int
    tokens: int
    hidden: int
    sms: int  # 0 for the low-latency kernels
    transmit_s: float
    notify_s: float = 0.0


def parse_deepep(text: str, nodes: Optional[int]) -> list[DeepEPPoint]:
    """The points in one output of DeepEP's tests; `nodes`: the internode test's node count (it does not print it)."""
    points = []
    config = _CONFIG.search(text)
    tokens, hidden = (int(config.group(1)), int(config.group(2))) if config else (4096, HIDDEN)
    for which, sms, notify_us, transmit_us in _BEST.findall(text):
        if nodes is None:
            raise ValueError("DeepEP's internode test output needs its node count (--deepep-nodes)")
        direction = "combine" if which == "combine" else "dispatch"
        points.append(
            DeepEPPoint(
                "normal",
                direction,
                8 * nodes,
                tokens,
                hidden,
                int(sms),
                float(transmit_us) * 1e-6,
                float(notify_us) * 1e-6,
            )
        )
    ranks = {int(rank): (float(d), float(c)) for rank, d, c in _LOW.findall(text)}
    if ranks:
        for index, direction in enumerate(("dispatch", "combine")):
            mean = float(np.mean([times[index] for times in ranks.values()])) * 1e-6
            points.append(DeepEPPoint("low_latency", direction, len(ranks), LOW_LATENCY_TOKENS, HIDDEN, 0, mean))
    return points


def _volumes(point: DeepEPPoint) -> tuple[float, float, float]:
    """(RDMA, NVLink-stage, NVLink link) bytes of the busiest rank at the point's shape (DeepEP's test routing)."""
    rdma, nvl, link, _ = normal_volumes(point.ranks // 8, point.tokens, point.direction)
    scale = point.hidden / HIDDEN
    return rdma * scale, nvl * scale, link * scale


def _normal_time(kernels: DeepEPKernels, point: DeepEPPoint, nic: float, nvlink: float) -> tuple[float, float]:
    """(transmit, notify) seconds the kernels give a normal-kernel point."""
    rdma, nvl, link = _volumes(point)
    nodes = point.ranks // 8
    total = kernels.normal_seconds(point.direction, nodes, point.sms, rdma, nvl, link, nic, nvlink)
    notify = kernels.normal[point.direction].notify_seconds(kernels.node_key(point.direction, nodes), nvl)
    return total - notify, notify


def _with_node_count(fit: NormalFit, nodes: int, source: int) -> NormalFit:
    """The fit with an entry for `nodes` copied from `source` (the nearest measured node count)."""
    if nodes in fit.floor_s:
        return fit
    efficiency = dict(fit.efficiency)
    efficiency.update({(nodes, sms): curve for (count, sms), curve in fit.efficiency.items() if count == source})
    return NormalFit(
        {**fit.floor_s, nodes: fit.floor_s[source]},
        {**fit.nvl_bytes_per_sm, nodes: fit.nvl_bytes_per_sm[source]},
        {**fit.rdma_efficiency, nodes: fit.rdma_efficiency[source]},
        efficiency,
        {**fit.notify, nodes: fit.notify.get(source, (0.0, 0.0))},
    )


def _calibrate_normal(kernels: DeepEPKernels, point: DeepEPPoint, nic: float, nvlink: float) -> DeepEPKernels:
    nodes = point.ranks // 8
    fit = _with_node_count(kernels.normal[point.direction], nodes, kernels.node_key(point.direction, nodes))
    kernels = replace(kernels, normal={**kernels.normal, point.direction: fit})
    rdma, nvl, _ = _volumes(point)
    rdma_bound = rdma / (fit.rdma_efficiency[nodes] * nic) >= nvl / (point.sms * fit.nvl_bytes_per_sm[nodes])

    def scaled(factor: float) -> DeepEPKernels:
        if rdma_bound:
            changed = replace(fit, rdma_efficiency={**fit.rdma_efficiency, nodes: fit.rdma_efficiency[nodes] * factor})
        else:
            changed = replace(
                fit, nvl_bytes_per_sm={**fit.nvl_bytes_per_sm, nodes: fit.nvl_bytes_per_sm[nodes] * factor}
            )
        return replace(kernels, normal={**kernels.normal, point.direction: changed})

    low, high = np.log(0.02), np.log(50.0)  # the rate's scale, by bisection: time falls as the rate grows
    for _ in range(60):
        middle = (low + high) / 2
        transmit, _ = _normal_time(scaled(float(np.exp(middle))), point, nic, nvlink)
        low, high = (middle, high) if transmit > point.transmit_s else (low, middle)
    kernels = scaled(float(np.exp((low + high) / 2)))
    fit = kernels.normal[point.direction]
    _, per_byte = fit.notify.get(nodes, (0.0, 0.0))
    notify = {**fit.notify, nodes: (max(0.0, point.notify_s - per_byte * nvl), per_byte)}
    return replace(kernels, normal={**kernels.normal, point.direction: replace(fit, notify=notify)})


def _calibrate_low_latency(kernels: DeepEPKernels, point: DeepEPPoint, nic: float, nvlink: float) -> DeepEPKernels:
    fit = kernels.low_latency[point.direction]
    rdma, nvl = low_latency_volumes(max(1, point.ranks // 8), point.tokens, point.direction)
    ideal = kernels.low_latency_seconds(point.direction, point.ranks, rdma, nvl, nic, nvlink) - fit.floor(point.ranks)
    floor = {**fit.floor_s, point.ranks: max(0.0, point.transmit_s - ideal)}
    return replace(kernels, low_latency={**kernels.low_latency, point.direction: replace(fit, floor_s=floor)})


def predicted(kernels: DeepEPKernels, point: DeepEPPoint, nic: float, nvlink: float) -> float:
    """The kernels' time for a point (seconds; normal kernels: transmit plus notify)."""
    if point.kernel == "normal":
        return sum(_normal_time(kernels, point, nic, nvlink))
    rdma, nvl = low_latency_volumes(max(1, point.ranks // 8), point.tokens, point.direction)
    return kernels.low_latency_seconds(point.direction, point.ranks, rdma, nvl, nic, nvlink)


def calibrate(base: DeepEPKernels, points: list[DeepEPPoint], nic: float, nvlink: float) -> DeepEPKernels:
    """The shipped kernels moved to the user's points (see the module docstring)."""
    kernels = base
    for point in points:
        step = _calibrate_normal if point.kernel == "normal" else _calibrate_low_latency
        kernels = step(kernels, point, nic, nvlink)
    source = f"DeepEP's tests on the user's cluster ({len(points)} points), over {base.source}"
    return replace(kernels, source=source, held_out_error={})
