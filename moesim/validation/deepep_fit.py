"""DeepEP's measured kernels fitted to development rows, and every measured row beside the fit (issue 28).

The rows are aiconfigurator's DeepEP tables on 1-8 H100 nodes (`validation/network/deepep_normal.csv`,
`deepep_low_latency.csv`). Each row's bytes are the busiest rank's under the routing DeepEP's tests use (random
scores; the normal kernels' tokens limited to the top min(nodes, 4) nodes), routed by moesim's router on that many
H100 nodes, so that the fit and the simulator measure bytes the same way (`collectives.deepep_volumes`). The form
is `moesim.cluster.deepep_kernels`; held-out rows (the network draw) never reach `fit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import numpy as np

from moesim.cluster.collective_tables import shipped
from moesim.cluster.deepep_kernels import DIRECTIONS, MEASURED, DeepEPKernels, LowLatencyFit, NormalFit
from moesim.cluster.topology import Topology
from moesim.cost.kernel_tables import csv_rows
from moesim.scenario import scenario_from_dict
from moesim.sim.collectives import (
    Traffic,
    all_to_all,
    deepep_volumes,
    local_share,
    low_latency_all_to_all,
    low_latency_copies,
)
from moesim.sim.routing_load import route_layers
from moesim.validation.held_out import NETWORK_TABLES, is_held_out_network_row

SOURCE = (
    "aiconfigurator's DeepEP tables on 1-8 H100 SXM nodes (ai-dynamo/aiconfigurator, Apache-2.0, "
    "systems/data/h100_sxm/comm/sglang/0.5.6.post2/wideep_deepep_*_perf.parquet; validation/network/deepep_*.csv)"
)
HIDDEN = 7168
ROUTED_TOKENS = 1024
"""Tokens a rank routed per row at most; bigger rows scale the bytes (random routing: bytes grow with tokens)."""
NIC_BYTES_PER_S = 400e9 / 8  # one ConnectX-7 400 Gb/s a GPU, as the measuring cluster's
NVLINK_BYTES_PER_S = 450e9  # H100 SXM's datasheet NVLink rate, one direction
FLOOR_TOKENS = 2
"""Calls of up to this many tokens a rank set a node count's floor (the median of their times)."""
FABRIC_SHARE = 0.5
"""A node count whose best RDMA rate is under this share of the best node count's is fabric-limited."""


def _scenario(nodes: int, tokens: int, low_latency: bool):
    ranks = 8 * nodes
    routing = (
        {"strategy": "top_k", "num_expert_groups": 1}
        if low_latency or nodes == 1
        else {
            "strategy": "group_limited",
            "group_score": "max",
            "num_expert_groups": nodes,
            "topk_groups": min(nodes, 4),
        }
    )
    return scenario_from_dict(
        {
            "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3, "router_bias": False},
            "cluster": {"preset": "dgx-h100", "num_nodes": nodes, "deepep_kernels": "link_rates"},  # bytes only
            "parallelism": {"ep_size": ranks},
            "workload": {"mode": "training", "seq_len": tokens, "precision": {"dispatch": "fp8", "combine": "bf16"}},
            "routing": routing,
            "simulation": {"max_routed_tokens": min(tokens, ROUTED_TOKENS) * ranks},
        }
    )


@lru_cache(maxsize=None)
def routed(nodes: int, tokens: int, low_latency: bool = False) -> tuple[Topology, Traffic, np.ndarray]:
    """DeepEP's test routing of `tokens` a rank on `nodes` H100 nodes: the topology, the dispatch traffic (fp8
    bytes) and each rank's received (token, expert) copies."""
    scenario = _scenario(nodes, tokens, low_latency)
    topology = Topology.from_cluster(scenario.cluster)
    (layer,), _ = route_layers(scenario, [0], tokens * 8 * nodes, topology.gpus_per_node)
    return topology, layer.traffic, np.array([rows.sum() for rows in layer.rank_rows])


def token_bytes(direction: str) -> float:
    """fp8 with a scale per 128 values (dispatch), bf16 (combine)."""
    return HIDDEN + 4 * HIDDEN / 128 if direction == "dispatch" else 2 * HIDDEN


def normal_volumes(nodes: int, tokens: int, direction: str) -> tuple[float, float, float, int]:
    """(RDMA bytes, NVLink-stage bytes, NVLink link bytes, nodes) of the busiest rank for one row."""
    topology, traffic, _ = routed(nodes, tokens)
    if direction == "combine":
        traffic = traffic.transposed(token_bytes("combine") / token_bytes("dispatch"))
    return deepep_volumes(topology, traffic)


def low_latency_volumes(nodes: int, tokens: int, direction: str, nvlink: bool = True) -> tuple[float, float]:
    """(RDMA bytes, NVLink bytes) of the busiest rank for one low-latency row: each (token, expert) copy its own
    message; `nvlink`: copies to a rank's own node over NVLink."""
    topology, traffic, copies = routed(nodes, tokens, True)
    local = local_share(topology, traffic) if nvlink and nodes > 1 else np.full(copies.size, float(nvlink))
    rdma, nvl = low_latency_copies(copies, np.full(copies.size, copies.sum() / copies.size), local)
    return rdma * token_bytes(direction), nvl * token_bytes(direction)


def normal_rows() -> list[dict[str, str]]:
    return csv_rows(NETWORK_TABLES / "deepep_normal.csv")


def low_latency_rows() -> list[dict[str, str]]:
    return csv_rows(NETWORK_TABLES / "deepep_low_latency.csv")


def _fit_normal(
    rows: list[dict[str, str]], direction: str, nvlink_ceiling: float, fabric: tuple[int, ...] = ()
) -> NormalFit:
    by_nodes: dict[int, list[tuple[int, int, float, float, float, float]]] = {}
    notices: dict[int, dict[float, list[float]]] = {}  # nodes -> NVLink-stage bytes -> notify seconds (each SM count)
    for row in rows:
        nodes, tokens, sms = int(row["nodes"]), int(row["tokens"]), int(row["sms"])
        rdma, nvl, link, _ = normal_volumes(nodes, tokens, direction)
        by_nodes.setdefault(nodes, []).append((tokens, sms, rdma, nvl, float(row[f"{direction}_us"]) * 1e-6, link))
        notices.setdefault(nodes, {}).setdefault(nvl, []).append(float(row[f"{direction}_notify_us"]) * 1e-6)
    floor = {n: float(np.median([row[4] for row in mine if row[0] <= FLOOR_TOKENS])) for n, mine in by_nodes.items()}
    rdma_efficiency = {
        n: max(r / max(t - floor[n], 1e-9) for tok, _, r, _, t, _ in mine if tok >= ROUTED_TOKENS) / NIC_BYTES_PER_S
        for n, mine in by_nodes.items()
        if n > 1
    }
    per_sm: dict[int, float] = {}
    for n, mine in by_nodes.items():  # rows neither RDMA- nor ceiling-bound (one node: one SM count), the SMs' rate
        rates = [
            v / (t - floor[n]) / sms
            for tok, sms, r, v, t, link in mine
            if tok >= 4 * ROUTED_TOKENS
            and n not in fabric
            and (n == 1 or r / (t - floor[n]) < 0.8 * rdma_efficiency[n] * NIC_BYTES_PER_S)
            and (n == 1 or link / (t - floor[n]) < 0.8 * nvlink_ceiling)
        ]
        if rates:
            per_sm[n] = float(np.median(rates))
    fitted = sorted(n for n in per_sm if n > 1)
    for n in by_nodes:  # no row measures the SMs' rate: 1 / rate linear in nodes through the others
        if n not in per_sm and n > 1:
            slope, intercept = np.polyfit(fitted, [1 / per_sm[m] for m in fitted], 1) if len(fitted) > 1 else (0, 0)
            per_sm[n] = 1 / (intercept + slope * n) if len(fitted) > 1 else per_sm[fitted[0]]
    notify = {}
    for n, by_bytes in notices.items():  # a line through each size's median over the SM counts
        sizes = sorted(by_bytes)
        medians = [float(np.median(by_bytes[size])) for size in sizes]
        if n > 1 and max(medians) > 0:
            per_byte, fixed = np.polyfit(sizes, medians, 1, w=1 / np.array(medians))  # relative errors
            notify[n] = (float(fixed), float(per_byte))
    fit = NormalFit(floor, per_sm, rdma_efficiency, {}, notify)
    kernels = DeepEPKernels("", "", 1.0, {direction: fit}, {})
    efficiency = {}
    for n, mine in by_nodes.items():
        for sms in sorted({row[1] for row in mine}):
            points = []
            for tokens, _, rdma, nvl, seconds, link in sorted(row for row in mine if row[1] == sms):
                ideal = _ideal(kernels, direction, n, sms, rdma, nvl, link, nvlink_ceiling)
                points.append((ideal, max(seconds - floor[n], 0.0) / ideal))
            efficiency[(n, sms)] = (tuple(p[0] for p in points), tuple(p[1] for p in points))
    return NormalFit(floor, per_sm, rdma_efficiency, efficiency, notify)


def _ideal(
    kernels: DeepEPKernels, direction: str, nodes: int, sms: int, rdma: float, nvl: float, link: float, ceiling: float
) -> float:
    fit = kernels.normal[direction]
    ideal = max(nvl / (sms * fit.nvl_bytes_per_sm[nodes]), link / ceiling)
    return max(ideal, rdma / (fit.rdma_efficiency[nodes] * NIC_BYTES_PER_S)) if nodes > 1 else ideal


def _fit_low_latency(rows: list[dict[str, str]], direction: str) -> LowLatencyFit:
    groups: dict[int, list[tuple[float, float, float]]] = {}
    for row in rows:
        nodes, tokens = int(row["nodes"]), int(row["tokens"])
        rdma, nvl = low_latency_volumes(nodes, tokens, direction)
        groups.setdefault(int(row["ranks"]), []).append((rdma, nvl, float(row[f"{direction}_us"]) * 1e-6))

    def slope_of(points: list[tuple[float, float]]) -> float:  # a common slope through each group's own intercept
        x = np.concatenate([np.array(p)[:, 0] - np.mean(np.array(p)[:, 0]) for p in points])
        y = np.concatenate([np.array(p)[:, 1] - np.mean(np.array(p)[:, 1]) for p in points])
        return float((x * y).sum() / (x * x).sum())

    one_node = [(nvl, t) for _, nvl, t in groups.get(8, [])]
    nvl_slope = slope_of([one_node])
    spans = [[(rdma, t) for rdma, _, t in mine] for ranks, mine in sorted(groups.items()) if ranks > 8]
    rdma_slope = slope_of(spans)
    floor = {8: float(np.mean([t for _, t in one_node]) - nvl_slope * np.mean([v for v, _ in one_node]))}
    for ranks, mine in sorted(groups.items()):
        if ranks > 8:
            floor[ranks] = float(np.mean([t for _, _, t in mine]) - rdma_slope * np.mean([r for r, _, _ in mine]))
    return LowLatencyFit(floor, 1 / rdma_slope / NIC_BYTES_PER_S, 1 / nvl_slope)


def nvlink_ceiling_share() -> float:
    """NCCL's best measured all-to-all bus rate on 8 H100s over the datasheet NVLink rate (the shipped fit)."""
    curve = shipped("H100-SXM").curves["alltoall"]
    return max(curve.efficiency[8])


def fit(normal: Optional[list[dict[str, str]]] = None, low: Optional[list[dict[str, str]]] = None) -> DeepEPKernels:
    """DeepEP's H100 kernels from development rows only (held-out rows are dropped here, whatever is passed)."""
    normal = [row for row in (normal_rows() if normal is None else normal) if not is_held_out_network_row(row)]
    low = [row for row in (low_latency_rows() if low is None else low) if not is_held_out_network_row(row)]
    share = nvlink_ceiling_share()
    ceiling = share * NVLINK_BYTES_PER_S
    first = _fit_normal(normal, "dispatch", ceiling)
    best = max(first.rdma_efficiency.values())
    fabric = tuple(n for n, value in sorted(first.rdma_efficiency.items()) if value < FABRIC_SHARE * best)
    fits = {direction: _fit_normal(normal, direction, ceiling, fabric) for direction in DIRECTIONS}
    low_fits = {direction: _fit_low_latency(low, direction) for direction in DIRECTIONS}
    source = f"{SOURCE}; {len(normal)} normal and {len(low)} low-latency development rows"
    return DeepEPKernels("h100_sxm", source, share, fits, low_fits, fabric, {})


@dataclass(frozen=True)
class DeepEPCheck:
    kernel: str  # normal or low_latency
    direction: str
    nodes: int
    ranks: int
    tokens: int
    sms: int  # 0 for the low-latency kernels
    held_out: bool
    measured_us: float
    predicted_us: float
    link_us: float  # the link-rate model moesim ran before (`cluster.deepep_kernels: link_rates`)

    @property
    def error(self) -> float:
        return abs(self.predicted_us / self.measured_us - 1)


@lru_cache(maxsize=None)
def link_rate_us(kernel: str, direction: str, nodes: int, tokens: int) -> float:
    """The link-rate model's time of one row (microseconds)."""
    topology, traffic, copies = routed(nodes, tokens, kernel == "low_latency")
    scale = token_bytes(direction) / token_bytes("dispatch")
    if kernel == "normal":
        traffic = traffic.transposed(scale) if direction == "combine" else traffic
        return all_to_all(topology, traffic, "deepep", "full").seconds * 1e6
    even = np.full(copies.size, copies.sum() / copies.size)
    incoming, outgoing = (copies, even) if direction == "dispatch" else (even, copies)
    return low_latency_all_to_all(topology, incoming, outgoing, token_bytes("dispatch") * scale).seconds * 1e6


def checks(kernels: DeepEPKernels) -> list[DeepEPCheck]:
    """Every measured row beside the kernels' prediction (the measuring cluster's own fabric) and the link-rate
    model's."""
    out = []
    nic, nvlink = NIC_BYTES_PER_S, NVLINK_BYTES_PER_S
    for row in normal_rows():
        nodes, tokens, sms = int(row["nodes"]), int(row["tokens"]), int(row["sms"])
        for direction in DIRECTIONS:
            rdma, nvl, link, _ = normal_volumes(nodes, tokens, direction)
            seconds = kernels.normal_seconds(direction, nodes, sms, rdma, nvl, link, nic, nvlink)
            measured = float(row[f"{direction}_us"]) + float(row[f"{direction}_notify_us"])
            before = link_rate_us("normal", direction, nodes, tokens)
            held = is_held_out_network_row(row)
            out.append(
                DeepEPCheck("normal", direction, nodes, nodes * 8, tokens, sms, held, measured, seconds * 1e6, before)
            )
    for row in low_latency_rows():
        nodes, tokens, ranks = int(row["nodes"]), int(row["tokens"]), int(row["ranks"])
        for direction in DIRECTIONS:
            rdma, nvl = low_latency_volumes(nodes, tokens, direction)
            seconds = kernels.low_latency_seconds(direction, ranks, rdma, nvl, nic, nvlink)
            measured, before = float(row[f"{direction}_us"]), link_rate_us("low_latency", direction, nodes, tokens)
            held = is_held_out_network_row(row)
            out.append(
                DeepEPCheck("low_latency", direction, nodes, ranks, tokens, 0, held, measured, seconds * 1e6, before)
            )
    return out


def summary(values: list[float]) -> tuple[int, float, float]:
    return (len(values), float(np.median(values)), float(np.percentile(values, 90))) if values else (0, 0.0, 0.0)


def fit_with_errors() -> DeepEPKernels:
    """The fit, with each kernel's held-out error recorded in it."""
    kernels = fit()
    rows = [check for check in checks(kernels) if check.held_out]
    errors = {kernel: summary([c.error for c in rows if c.kernel == kernel]) for kernel in ("normal", "low_latency")}
    return replace(kernels, held_out_error=errors)


def write_shipped() -> str:
    path = MEASURED / "deepep_h100_sxm.json"
    path.write_text(json.dumps(fit_with_errors().to_json(), indent=1) + "\n")
    return str(path)
