"""NCCL's collectives inside one NVLink domain, as measured: latency and achieved bus bandwidth by message size.

A datasheet link rate with one fixed latency misfits NCCL inside a node by a third or more: an 8-GPU H100 node's
all-to-all reaches 280-320 GB/s a GPU at large messages (not the 450 GB/s NVLink rate), a few microseconds of latency
dominate below 100 KB, and the protocols NCCL switches between (LL, LL128, Simple) bend the curve in between. moesim
therefore reads each collective from nccl-tests measurements (`validation/network/nccl_intranode.csv`) through a
two-part form that carries over to traffic the tables never timed (an uneven all-to-all, a bigger group):

    time(n GPUs, S bytes) = latency(n) + bus bytes(n, S) / bus rate(n, S)

* `latency(n) = a + b (n - 1)`: the floor of the smallest messages, growing with the peers a rank talks to;
* bus bytes, nccl-tests' convention: an all-reduce moves 2 (n - 1) / n x S through each GPU's link, an all-gather,
  reduce-scatter or all-to-all (n - 1) / n x S;
* bus rate: the rate the development rows achieved at that size, interpolated in log size (and in log n between
  the GPU counts measured), kept as a fraction of the GPU's datasheet NVLink rate so that a cluster whose
  `scale_up_gb_per_s` differs scales it.

`fit` builds a GPU's curves from development rows only (the held-out draw of `validation/held_out/`);
`moesim/cluster/measured/nccl_<gpu>.json` are the shipped fits (`python -m moesim.validation.network --fit`
writes them again; a test checks they are what the rows give).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
MEASURED = Path(__file__).resolve().parent / "measured"
FLOOR_BYTES = 4096
"""Messages up to this size set a GPU count's latency floor (the median of their times)."""
GPU_TABLES = {
    "A100-80GB": "a100_sxm",
    "H100-SXM": "h100_sxm",
    "H200": "h200_sxm",
    "B200": "b200_sxm",
    "B300": "b300_sxm",
    "GB200": "gb200",
    "GB300": "gb300",
}
"""moesim's GPU presets that nccl-tests tables measure, by aiconfigurator's names for them (its data folders)."""
NCCL_STAND_INS = {"H800": "h100_sxm"}
"""GPU presets read through another GPU's tables: an H800 is an H100 with fewer NVLink links, so its NCCL is the
H100's measured latency and efficiency (a fraction of the datasheet rate) at its own datasheet rate."""


def bus_factor(collective: str, ranks: int) -> float:
    """Bytes through each GPU's link per byte of nccl-tests' size (its busbw convention)."""
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    share = (ranks - 1) / ranks
    return 2 * share if collective == "all_reduce" else share


@dataclass(frozen=True)
class CollectiveCurve:
    """One collective on one GPU: latency a + b (n - 1) seconds, and per measured GPU count the bus rate (as a
    fraction of the datasheet NVLink rate) at each measured size."""

    latency_a: float
    latency_b: float
    sizes: dict[int, tuple[float, ...]]  # GPU count -> nccl-tests sizes (bytes), ascending
    efficiency: dict[int, tuple[float, ...]]  # GPU count -> bus rate / datasheet rate at those sizes

    def latency(self, ranks: int) -> float:
        return max(0.0, self.latency_a + self.latency_b * (ranks - 1))

    def _efficiency_at(self, ranks: int, size: float) -> float:
        x = np.log(max(size, 1.0))
        return float(np.exp(np.interp(x, np.log(self.sizes[ranks]), np.log(self.efficiency[ranks]))))

    def efficiency_at(self, ranks: int, size: float) -> float:
        """Bus rate / datasheet rate for `ranks` GPUs at nccl-tests size `size`: interpolated in log size along each
        measured GPU count, in log count between the two nearest (the nearest outside them)."""
        counts = sorted(self.sizes)
        if ranks <= counts[0] or ranks >= counts[-1] or ranks in self.sizes:
            nearest = min(counts, key=lambda count: abs(count - ranks))
            return self._efficiency_at(nearest, size)
        below = max(count for count in counts if count < ranks)
        above = min(count for count in counts if count > ranks)
        weight = (np.log(ranks) - np.log(below)) / (np.log(above) - np.log(below))
        low, high = np.log(self._efficiency_at(below, size)), np.log(self._efficiency_at(above, size))
        return float(np.exp(low + weight * (high - low)))


@dataclass(frozen=True)
class MeasuredCollectives:
    """A GPU's NCCL collectives inside its NVLink domain, fitted to measured rows."""

    gpu: str  # the tables' name (h100_sxm, ...)
    datasheet_bytes_per_s: float  # the NVLink rate the efficiencies are fractions of
    source: str
    curves: dict[str, CollectiveCurve]
    measured_ranks: tuple[int, ...]
    held_out_error: tuple[int, float, float] = (0, 0.0, 0.0)
    """(rows, median, 90th percentile) of |predicted / measured - 1| on the GPU's held-out rows."""

    def covers(self, ranks: int) -> bool:
        """Whether the tables measure an NVLink domain this large (moesim does not extend them beyond)."""
        return ranks <= max(self.measured_ranks)

    def label(self) -> str:
        """What a figure resting on these curves rests on, with its held-out error."""
        rows, median, p90 = self.held_out_error
        return (
            f"NCCL inside a node: nccl-tests measured on {self.gpu} (aiconfigurator's tables), held-out error "
            f"{median:.1%} median / {p90:.1%} p90 on {rows} rows (validation/NETWORK.md)"
        )

    def seconds(self, collective: str, ranks: int, size: float, link_bytes_per_s: Optional[float] = None) -> float:
        """nccl-tests' time for `collective` over `ranks` GPUs of one node at size `size` bytes; links at
        `link_bytes_per_s` (default: the datasheet rate the tables were measured at)."""
        if ranks <= 1 or size <= 0:
            return 0.0
        curve = self.curves[collective]
        rate = self.bus_rate(collective, ranks, size, link_bytes_per_s)
        return curve.latency(ranks) + bus_factor(collective, ranks) * size / rate

    def bus_rate(self, collective: str, ranks: int, size: float, link_bytes_per_s: Optional[float] = None) -> float:
        """Achieved bytes/s through each GPU's link at that size."""
        link = self.datasheet_bytes_per_s if link_bytes_per_s is None else link_bytes_per_s
        return self.curves[collective].efficiency_at(ranks, size) * link

    def to_json(self) -> dict:
        return {
            "gpu": self.gpu,
            "datasheet_bytes_per_s": self.datasheet_bytes_per_s,
            "source": self.source,
            "measured_ranks": list(self.measured_ranks),
            "held_out_error": {
                "rows": self.held_out_error[0],
                "median": round(self.held_out_error[1], 4),
                "p90": round(self.held_out_error[2], 4),
            },
            "curves": {
                name: {
                    "latency_a_s": curve.latency_a,
                    "latency_b_s": curve.latency_b,
                    "points": {
                        str(n): [[size, round(eff, 6)] for size, eff in zip(curve.sizes[n], curve.efficiency[n])]
                        for n in sorted(curve.sizes)
                    },
                }
                for name, curve in self.curves.items()
            },
        }

    @classmethod
    def from_json(cls, document: dict) -> "MeasuredCollectives":
        curves = {}
        for name, curve in document["curves"].items():
            points = {int(ranks): rows for ranks, rows in curve["points"].items()}
            curves[name] = CollectiveCurve(
                curve["latency_a_s"],
                curve["latency_b_s"],
                {ranks: tuple(float(size) for size, _ in rows) for ranks, rows in points.items()},
                {ranks: tuple(float(eff) for _, eff in rows) for ranks, rows in points.items()},
            )
        return cls(
            document["gpu"],
            float(document["datasheet_bytes_per_s"]),
            document["source"],
            curves,
            tuple(document["measured_ranks"]),
            (
                int(document["held_out_error"]["rows"]),
                float(document["held_out_error"]["median"]),
                float(document["held_out_error"]["p90"]),
            ),
        )


def fit_curve(
    rows: Iterable[tuple[int, float, float]], datasheet_bytes_per_s: float, collective: str
) -> CollectiveCurve:
    """A collective's curve from (GPU count, nccl-tests size in bytes, seconds) rows: the latency line through
    each count's floor (least squares), then each row's bus rate with that latency taken off."""
    by_ranks: dict[int, list[tuple[float, float]]] = {}
    for ranks, size, seconds in rows:
        by_ranks.setdefault(int(ranks), []).append((float(size), float(seconds)))
    counts = sorted(by_ranks)
    floors = []
    for ranks in counts:
        small = [seconds for size, seconds in by_ranks[ranks] if size <= FLOOR_BYTES]
        floors.append(float(np.median(small)) if small else min(seconds for _, seconds in by_ranks[ranks]))
    if len(counts) > 1:
        slope, intercept = np.polyfit(np.array(counts, float) - 1, floors, 1)
    else:
        slope, intercept = 0.0, floors[0]
    curve_sizes, curve_efficiency = {}, {}
    for ranks in counts:
        latency = max(0.0, intercept + slope * (ranks - 1))
        points = sorted(by_ranks[ranks])
        sizes = np.array([size for size, _ in points])
        times = np.array([seconds for _, seconds in points])
        # a row at or under the latency floor achieved no measurable transfer time: credit it a tenth of its time
        transfer = np.maximum(times - latency, 0.1 * times)
        rates = bus_factor(collective, ranks) * sizes / transfer
        curve_sizes[ranks] = tuple(float(size) for size in sizes)
        curve_efficiency[ranks] = tuple(float(rate / datasheet_bytes_per_s) for rate in rates)
    return CollectiveCurve(float(intercept), float(slope), curve_sizes, curve_efficiency)


def fit(gpu: str, rows: list[dict[str, str]], datasheet_bytes_per_s: float, source: str) -> MeasuredCollectives:
    """A GPU's measured collectives from nccl-tests rows (`collective, ranks, bytes, time_us`)."""
    curves = {}
    for collective in COLLECTIVES:
        mine = [
            (int(row["ranks"]), float(row["bytes"]), float(row["time_us"]) * 1e-6)
            for row in rows
            if row["collective"] == collective
        ]
        if mine:
            curves[collective] = fit_curve(mine, datasheet_bytes_per_s, collective)
    ranks = tuple(sorted({int(row["ranks"]) for row in rows}))
    return MeasuredCollectives(gpu, datasheet_bytes_per_s, source, curves, ranks)


@lru_cache(maxsize=None)
def shipped(gpu_name: str) -> Optional[MeasuredCollectives]:
    """The shipped fit for moesim's GPU preset `gpu_name`, or None where no table measures it."""
    table = GPU_TABLES.get(gpu_name) or NCCL_STAND_INS.get(gpu_name)
    path = MEASURED / f"nccl_{table}.json"
    if table is None or not path.exists():
        return None
    return MeasuredCollectives.from_json(json.loads(path.read_text()))
