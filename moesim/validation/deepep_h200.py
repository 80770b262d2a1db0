"""DeepEP's kernels on one H200 node beside the H100 fit (issue 28): a check on another GPU, never fitted.

aiconfigurator measured DeepEP's intranode kernels on one H200 node across 18 MoE shapes (hidden 2,048-7,168, top-1
to top-22 of 8-512 experts; the normal kernels at 4-24 SMs; `validation/network/deepep_h200_*.csv`). moesim's
kernels were fitted on H100 tables whose single-node rows hold 20 SMs and DeepSeek-V3's shape only, so these rows
test what the fit assumes beyond them: the rate a SM (linear in SMs at one node), bytes that scale with the hidden
size and the routing, and an H200's NVLink at the H100's measured efficiency. The routing is DeepEP's tests': random
scores, each token's top-k experts, 8 ranks holding E / 8 experts each; the busiest rank's bytes as the simulator
counts them (`collectives.deepep_volumes`: tokens received or sent, its own included; the NVLink link bytes without
them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from moesim.cluster.collective_tables import GPU_TABLES
from moesim.cluster.deepep_kernels import DeepEPKernels
from moesim.cluster.hardware import gpu_preset
from moesim.cost.kernel_tables import csv_rows
from moesim.validation.held_out import NETWORK_TABLES

RANKS = 8
ROUTED_TOKENS = 1024
"""Tokens a rank routed per row at most; bigger rows scale the bytes."""
PRESET_OF_TABLE = {table: preset for preset, table in GPU_TABLES.items()}
"""moesim's GPU preset for each of aiconfigurator's table names (h200_sxm -> H200, ...)."""


@dataclass(frozen=True)
class H200Check:
    kernel: str
    direction: str
    shape: str  # hidden x top-k x experts
    tokens: int
    sms: int  # 0: low-latency
    measured_us: float
    predicted_us: float

    @property
    def error(self) -> float:
        return abs(self.predicted_us / self.measured_us - 1)


def token_bytes(hidden: int, direction: str) -> float:
    return hidden + 4 * hidden / 128 if direction == "dispatch" else 2 * hidden


@lru_cache(maxsize=None)
def routed_tokens(tokens: int, topk: int, experts: int) -> tuple[float, float, float]:
    """(tokens the busiest rank receives or sends, the same without its own, (token, expert) copies the busiest rank
    receives) for `tokens` a rank on one node, per token a rank routed."""
    routed = min(tokens, ROUTED_TOKENS)
    rng = np.random.default_rng(tokens * 1_000_003 + topk * 1009 + experts)
    scores = rng.random((routed * RANKS, experts))
    chosen = np.argpartition(-scores, topk - 1, axis=1)[:, :topk]
    destination = chosen // (experts // RANKS)
    source = np.repeat(np.arange(RANKS), routed)
    pairs = np.zeros((RANKS, RANKS))  # tokens from each rank to each rank, once per rank
    for rank in range(RANKS):  # ranks, not tokens
        np.add.at(pairs[:, rank], source, (destination == rank).any(axis=1))
    own = np.diag(pairs)
    stage = max(pairs.sum(axis=0).max(), pairs.sum(axis=1).max())
    link = max((pairs.sum(axis=0) - own).max(), (pairs.sum(axis=1) - own).max())
    copies = np.bincount(destination.ravel(), minlength=RANKS).max()
    return stage / routed, link / routed, copies / routed


def checks(kernels: Optional[DeepEPKernels], table: str = "deepep_h200", gpu: Optional[str] = None) -> list[H200Check]:
    """Every row of one node's tables (`table`_normal.csv and _low_latency.csv; `gpu`: only its rows) beside the
    kernels' time (normal kernels: one node, its SMs; no notify inside a node; low-latency: every copy over NVLink),
    or, with no kernels, the link-rate model's: 2 us plus the busiest link's bytes at the datasheet NVLink rate
    (normal kernels), 5 us plus the busiest rank's copies at the NIC's line rate (low-latency: every copy over RDMA,
    as moesim's link model sends them)."""
    out = []
    for kernel in ("normal", "low_latency"):
        for row in csv_rows(NETWORK_TABLES / f"{table}_{kernel}.csv"):
            if gpu is not None and row["gpu"] != gpu:
                continue
            tokens, hidden, sms = int(row["tokens"]), int(row["hidden"]), int(row.get("sms") or 0)
            stage, link, copies = routed_tokens(tokens, int(row["topk"]), int(row["experts"]))
            shape = f"{hidden}x{row['topk']}x{row['experts']}"
            for direction in ("dispatch", "combine"):
                size = token_bytes(hidden, direction) * tokens
                seconds = _seconds(kernels, kernel, direction, sms, size, (stage, link, copies), row["gpu"])
                measured = float(row[f"{direction}_us"])
                out.append(H200Check(kernel, direction, shape, tokens, sms, measured, seconds * 1e6))
    return out


def _seconds(
    kernels: Optional[DeepEPKernels],
    kernel: str,
    direction: str,
    sms: int,
    size: float,
    volumes: tuple[float, float, float],
    gpu: str,
) -> float:
    """One row's time (seconds); `volumes`: the busiest rank's NVLink-stage tokens, link tokens and copies a token."""
    stage, link, copies = volumes
    spec = gpu_preset(PRESET_OF_TABLE[gpu])  # the datasheet NVLink and NIC rates of the measured GPU
    nvlink, nic = spec.scale_up_gb_per_s * 1e9, spec.nic_gbps * 1e9 / 8
    if kernels is None:
        return 2e-6 + link * size / nvlink if kernel == "normal" else 5e-6 + copies * size / nic
    if kernel == "normal":
        return kernels.normal_seconds(direction, 1, sms, 0.0, stage * size, link * size, nic, nvlink)
    return kernels.low_latency_seconds(direction, RANKS, 0.0, copies * size, nic, nvlink)
