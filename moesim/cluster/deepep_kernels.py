"""DeepEP's all-to-all kernels as measured: what a dispatch or combine costs beyond its bytes at the link rate.

A link-rate model of DeepEP misses in three ways the measured tables show (`validation/network/deepep_*.csv`):
the normal (throughput) kernels move tokens through NVLink at a rate set by the SMs they hold, not by the link
(on 2-4 H100 nodes each SM forwards 10-14 GB/s; 4 SMs reach a sixth of what 24 do); every call pays a floor of
tens of microseconds (notify, barriers, the first chunk); and a small call reaches a fraction of its large-call
rate. The low-latency (decode) kernels pay a floor that grows with the ranks they talk to: the per-peer cost
that makes DeepEP slower at EP 256 than at EP 8 at the same bytes. moesim reads them in this form:

* normal kernels, one direction: `time = floor(nodes) + ideal x efficiency(nodes, SMs, ideal) + notify`, where
  `ideal = max(RDMA bytes / (RDMA efficiency x NIC rate), NVLink-stage bytes / (SMs x rate per SM),
  link bytes / NVLink ceiling)` (bytes: the busiest rank's; RDMA bytes leave the node once per destination node,
  NVLink-stage bytes are a rank's received tokens, its own included, as DeepEP's tests count them, link bytes
  those that cross NVLink). The ideal is the mechanism, the efficiency
  the measured shortfall of a call that size (1 at large calls, below at small ones), interpolated in log ideal
  between the measured sizes and in SMs between the measured SM counts; the notify kernel before it (counts
  exchanged, buffers cleared) a fixed time plus a time a byte, across nodes;
* low-latency kernels: `time = floor(ranks) + max(RDMA bytes / (efficiency x NIC rate), NVLink bytes /
  min(the kernel's measured NVLink rate, the NVLink ceiling))`,
  every (token, expert) copy its own message, the floor interpolated in log ranks (beyond the largest EP measured,
  extended at its last measured slope).

The NVLink ceiling is NCCL's best measured all-to-all rate on the GPU's link (DeepEP cannot beat the fabric).
Node counts whose measured RDMA rate is under half the best are the measuring cluster's fabric, not DeepEP
(aiconfigurator's 8-node H100 runs reach 17 GB/s a NIC; DeepEP's README reaches 45-51 GB/s at EP 64 on H800):
the `generic` profile moesim simulates with leaves them out. The fit is `moesim.validation.deepep_fit` (development
rows only); `moesim/cluster/measured/deepep_h100_sxm.json` is the shipped one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

MEASURED = Path(__file__).resolve().parent / "measured"
DEEPEP_GPUS = {"H100-SXM": "h100_sxm", "H800": "h100_sxm", "H200": "h100_sxm", "B200": "h100_sxm", "B300": "h100_sxm"}
"""moesim's GPU presets whose DeepEP kernels the H100 tables describe: the SM90 GPUs (an H800's NVLink ceiling is its
own), and B200 and B300, where on one node they miss aiconfigurator's measurements by 10.5% at the median against
the link rates' 93% (`validation/NETWORK.md`; chosen on the development rows). GB200 and GB300 are not: their trays'
GPU count in those tables is not stated."""
DIRECTIONS = ("dispatch", "combine")
DEFAULT_SMS = 20
"""The SMs DeepEP's normal kernels hold unless told (its `Buffer.num_sms`; DeepSeek-V3's training, report 3.2.2)."""


@dataclass(frozen=True)
class NormalFit:
    """One direction of the normal kernels."""

    floor_s: dict[int, float]  # nodes -> seconds of the smallest calls (1: the intranode kernel)
    nvl_bytes_per_sm: dict[int, float]  # nodes -> NVLink-stage bytes/s one SM moves
    rdma_efficiency: dict[int, float]  # nodes -> achieved RDMA rate / the GPU's NIC share
    efficiency: dict[tuple[int, int], tuple[tuple[float, ...], tuple[float, ...]]]
    """(nodes, SMs) -> (ideal seconds, ascending; measured time above the floor / ideal) at the measured sizes."""
    notify: dict[int, tuple[float, float]]
    """nodes -> (seconds, seconds a byte of the NVLink stage) of the notify kernel before the transmit kernel (it
    exchanges the counts and clears the buffers; aiconfigurator times it apart across nodes, 0 inside one)."""

    def notify_seconds(self, nodes: int, nvl_bytes: float) -> float:
        fixed, per_byte = self.notify.get(nodes, (0.0, 0.0))
        return fixed + per_byte * nvl_bytes

    def efficiency_at(self, nodes: int, sms: int, ideal: float) -> float:
        """Measured time above the floor over the ideal, at that ideal (log-interpolated) and SM count."""
        counts = sorted({count for n, count in self.efficiency if n == nodes})

        def along(count: int) -> float:
            grid, values = self.efficiency[(nodes, count)]
            return float(np.interp(np.log(max(ideal, 1e-12)), np.log(grid), values))

        if sms <= counts[0] or sms >= counts[-1] or sms in counts:
            return along(min(counts, key=lambda count: abs(count - sms)))
        below = max(count for count in counts if count < sms)
        above = min(count for count in counts if count > sms)
        weight = (sms - below) / (above - below)
        return (1 - weight) * along(below) + weight * along(above)


@dataclass(frozen=True)
class LowLatencyFit:
    """One direction of the low-latency kernels."""

    floor_s: dict[int, float]  # ranks -> seconds
    rdma_efficiency: float  # achieved RDMA rate / the GPU's NIC share
    nvl_bytes_per_s: float  # NVLink copies' rate (a rank's own node) as measured, the kernel's own

    def floor(self, ranks: int) -> float:
        counts = sorted(self.floor_s)
        x, y = np.log2(counts), np.array([self.floor_s[count] for count in counts])
        point = np.log2(max(ranks, 1))
        if point <= x[-1] or len(counts) < 2:
            return float(np.interp(point, x, y))
        slope = (y[-1] - y[-2]) / (x[-1] - x[-2])  # beyond the largest EP: its last measured slope
        return float(y[-1] + slope * (point - x[-1]))


@dataclass(frozen=True)
class DeepEPKernels:
    """DeepEP's normal and low-latency kernels on one GPU family, fitted to measured rows."""

    gpu: str
    source: str
    nvlink_efficiency: float  # NCCL's best all-to-all bus rate / datasheet NVLink: the NVLink stage's ceiling
    normal: dict[str, NormalFit]
    low_latency: dict[str, LowLatencyFit]
    fabric_nodes: tuple[int, ...] = ()  # node counts whose RDMA rate is the measuring cluster's fabric
    held_out_error: Optional[dict[str, tuple[int, float, float]]] = None  # kernel -> (rows, median, p90)

    def generic(self) -> "DeepEPKernels":
        """The kernels on a non-blocking fabric: the fabric-limited node counts left out."""
        if not self.fabric_nodes:
            return self
        normal = {}
        for direction, fit in self.normal.items():
            keep = [nodes for nodes in fit.floor_s if nodes not in self.fabric_nodes]
            best = max(fit.rdma_efficiency[nodes] for nodes in keep if nodes > 1)
            normal[direction] = NormalFit(
                {nodes: fit.floor_s[nodes] for nodes in keep},
                {nodes: fit.nvl_bytes_per_sm[nodes] for nodes in keep},
                {nodes: best for nodes in keep if nodes > 1},
                {key: value for key, value in fit.efficiency.items() if key[0] in keep},
                {nodes: fit.notify[nodes] for nodes in keep if nodes in fit.notify},
            )
        return replace(self, normal=normal, fabric_nodes=())

    def label(self) -> str:
        """What a figure resting on these kernels rests on, with its held-out error."""
        errors = self.held_out_error or {}
        parts = [
            f"{kernel} {median:.0%} median / {p90:.0%} p90 on {rows} rows"
            for kernel, (rows, median, p90) in sorted(errors.items())
        ]
        return f"DeepEP's kernels measured on {self.gpu} ({self.source}); held-out error " + "; ".join(parts)

    def node_key(self, direction: str, nodes: int) -> int:
        """The node count whose fitted entry a call over `nodes` nodes reads: 1 inside a node, else the nearest in
        log2 of the measured ones."""
        if nodes <= 1:
            return 1
        counts = [count for count in self.normal[direction].floor_s if count > 1]
        return min(counts, key=lambda count: (abs(np.log2(count) - np.log2(nodes)), count))

    def normal_seconds(
        self,
        direction: str,
        nodes: int,
        sms: int,
        rdma_bytes: float,
        nvl_bytes: float,
        link_bytes: float,
        nic_bytes_per_s: float,
        nvlink_bytes_per_s: float,
    ) -> float:
        """Seconds of one normal-kernel dispatch or combine over `nodes` nodes with `sms` SMs: the busiest rank's
        RDMA bytes (leaving its node), NVLink-stage bytes (received, its own included) and of those the bytes that
        cross NVLink; the GPU's NIC share and datasheet NVLink rate in bytes/s."""
        fit = self.normal[direction]
        key = self.node_key(direction, nodes)
        ceiling = self.nvlink_efficiency * nvlink_bytes_per_s
        ideal = max(nvl_bytes / (sms * fit.nvl_bytes_per_sm[key]), link_bytes / ceiling)
        if key > 1:
            ideal = max(ideal, rdma_bytes / (fit.rdma_efficiency[key] * nic_bytes_per_s))
        if ideal <= 0:
            return 0.0
        return fit.floor_s[key] + ideal * fit.efficiency_at(key, sms, ideal) + fit.notify_seconds(key, nvl_bytes)

    def low_latency_seconds(
        self,
        direction: str,
        ranks: int,
        rdma_bytes: float,
        nvl_bytes: float,
        nic_bytes_per_s: float,
        nvlink_bytes_per_s: float,
    ) -> float:
        """Seconds of one low-latency dispatch or combine over `ranks` ranks: the busiest rank's bytes to other
        nodes (RDMA) and to its own node (NVLink; 0 where the kernels send everything over RDMA)."""
        fit = self.low_latency[direction]
        nvlink = min(fit.nvl_bytes_per_s, self.nvlink_efficiency * nvlink_bytes_per_s)  # the kernel, or the link
        ideal = max(rdma_bytes / (fit.rdma_efficiency * nic_bytes_per_s), nvl_bytes / nvlink)
        return fit.floor(ranks) + ideal

    def to_json(self) -> dict:
        normal = {
            direction: {
                "floor_s": {str(k): v for k, v in fit.floor_s.items()},
                "nvl_bytes_per_sm": {str(k): v for k, v in fit.nvl_bytes_per_sm.items()},
                "rdma_efficiency": {str(k): round(v, 4) for k, v in fit.rdma_efficiency.items()},
                "notify": {str(k): [v[0], v[1]] for k, v in fit.notify.items()},
                "efficiency": {
                    f"{nodes}x{sms}": [[ideal, round(value, 4)] for ideal, value in zip(*points)]
                    for (nodes, sms), points in sorted(fit.efficiency.items())
                },
            }
            for direction, fit in self.normal.items()
        }
        low_latency = {
            direction: {
                "floor_s": {str(k): v for k, v in fit.floor_s.items()},
                "rdma_efficiency": round(fit.rdma_efficiency, 4),
                "nvl_bytes_per_s": round(fit.nvl_bytes_per_s),
            }
            for direction, fit in self.low_latency.items()
        }
        errors = {
            kernel: {"rows": rows, "median": round(median, 4), "p90": round(p90, 4)}
            for kernel, (rows, median, p90) in sorted((self.held_out_error or {}).items())
        }
        return {
            "gpu": self.gpu,
            "source": self.source,
            "nvlink_efficiency": round(self.nvlink_efficiency, 4),
            "fabric_nodes": list(self.fabric_nodes),
            "held_out_error": errors,
            "normal": normal,
            "low_latency": low_latency,
        }

    @classmethod
    def from_json(cls, document: dict) -> "DeepEPKernels":
        normal = {}
        for direction, part in document["normal"].items():
            efficiency = {}
            for key, points in part["efficiency"].items():
                nodes, sms = (int(value) for value in key.split("x"))
                efficiency[(nodes, sms)] = (tuple(p[0] for p in points), tuple(p[1] for p in points))
            normal[direction] = NormalFit(
                {int(k): float(v) for k, v in part["floor_s"].items()},
                {int(k): float(v) for k, v in part["nvl_bytes_per_sm"].items()},
                {int(k): float(v) for k, v in part["rdma_efficiency"].items()},
                efficiency,
                {int(k): (float(v[0]), float(v[1])) for k, v in part["notify"].items()},
            )
        low_latency = {
            direction: LowLatencyFit(
                {int(k): float(v) for k, v in part["floor_s"].items()},
                float(part["rdma_efficiency"]),
                float(part["nvl_bytes_per_s"]),
            )
            for direction, part in document["low_latency"].items()
        }
        errors = {
            kernel: (int(value["rows"]), float(value["median"]), float(value["p90"]))
            for kernel, value in document.get("held_out_error", {}).items()
        }
        return cls(
            document["gpu"],
            document["source"],
            float(document["nvlink_efficiency"]),
            normal,
            low_latency,
            tuple(document.get("fabric_nodes", ())),
            errors,
        )


@lru_cache(maxsize=None)
def shipped_kernels(gpu_name: str, fabric: bool = False) -> Optional[DeepEPKernels]:
    """The shipped DeepEP fit for moesim's GPU preset `gpu_name` (the `generic` profile unless `fabric`: the
    measuring cluster's own, its fabric-limited node counts kept), or None where no table measures the GPU."""
    table = DEEPEP_GPUS.get(gpu_name)
    path = MEASURED / f"deepep_{table}.json"
    if table is None or not path.exists():
        return None
    kernels = DeepEPKernels.from_json(json.loads(path.read_text()))
    return kernels if fabric else kernels.generic()
