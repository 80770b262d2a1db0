"""Measured network rows beside moesim's predictions (issue 28): the fits and the row-by-row checks that
`validation/NETWORK.md` (`moesim.validation.network`) tabulates.

NCCL's collectives are fitted from development rows only (the network draw of `held_out.py`); every row, development
and held out, is then predicted by the fit and by the datasheet model moesim used before (a link at its datasheet
rate plus a fixed latency), so that what the measurements changed shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from moesim.cluster.collective_tables import GPU_TABLES, MEASURED, MeasuredCollectives, bus_factor, fit
from moesim.cluster.hardware import gpu_preset
from moesim.cluster.topology import DATASHEET_SCALE_UP_LATENCY_S
from moesim.cost.kernel_tables import csv_rows
from moesim.validation.held_out import NETWORK_TABLES, is_held_out_network_row

NCCL_SOURCE = (
    "nccl-tests inside one node, measured by aiconfigurator (ai-dynamo/aiconfigurator, Apache-2.0, "
    "systems/data/<gpu>/comm/nccl/<version>/nccl_perf.parquet; validation/network/nccl_intranode.csv)"
)
DATASHEET_GB_PER_S = {
    **{table: gpu_preset(name).scale_up_gb_per_s for name, table in GPU_TABLES.items()},
    # NVLink 5, 1.8 TB/s both ways a GPU: NVIDIA's B300 (HGX B300) and GB200 / GB300 NVL72 datasheets
    "b300_sxm": 900.0,
    "gb200": 900.0,
    "gb300": 900.0,
}
"""Each measured GPU's datasheet NVLink rate, one direction (GB/s): what the curves are fractions of."""


def nccl_rows() -> list[dict[str, str]]:
    return csv_rows(NETWORK_TABLES / "nccl_intranode.csv")


def fit_all(rows: Optional[list[dict[str, str]]] = None) -> dict[str, MeasuredCollectives]:
    """Each GPU's curves from its development rows only."""
    rows = nccl_rows() if rows is None else rows
    fits = {}
    for gpu in sorted({row["gpu"] for row in rows}):
        development = [row for row in rows if row["gpu"] == gpu and not is_held_out_network_row(row)]
        nccl = sorted({row["nccl"] for row in development})
        source = f"{NCCL_SOURCE}; NCCL {', '.join(nccl)}; {len(development)} development rows"
        fitted = fit(gpu, development, DATASHEET_GB_PER_S[gpu] * 1e9, source)
        held = [check for check in nccl_checks({gpu: fitted}, rows) if check.held_out]
        values = errors(held)
        error = (len(held), float(np.median(values)), float(np.percentile(values, 90))) if held else (0, 0.0, 0.0)
        fits[gpu] = replace(fitted, held_out_error=error)
    return fits


def datasheet_seconds(collective: str, ranks: int, size: float, link_bytes_per_s: float) -> float:
    """moesim's model before the tables: the bus bytes at the datasheet rate, plus a fixed latency per ring step
    (all-reduce: 2 (n - 1) steps, as `all_reduce_time`'s ring) or per collective (the others)."""
    steps = 2 * (ranks - 1) if collective == "all_reduce" else 1
    return steps * DATASHEET_SCALE_UP_LATENCY_S + bus_factor(collective, ranks) * size / link_bytes_per_s


@dataclass(frozen=True)
class Check:
    """One measured row beside both models."""

    gpu: str
    collective: str
    ranks: int
    size: float
    measured_s: float
    moesim_s: float
    datasheet_s: float
    held_out: bool


def nccl_checks(
    fits: Optional[dict[str, MeasuredCollectives]] = None, rows: Optional[list[dict[str, str]]] = None
) -> list[Check]:
    """Every row of the GPUs `fits` covers (default: all, fitted here) beside both models."""
    fits = fit_all() if fits is None else fits
    checks = []
    for row in nccl_rows() if rows is None else rows:
        gpu, collective, ranks, size = row["gpu"], row["collective"], int(row["ranks"]), float(row["bytes"])
        if gpu not in fits:
            continue
        measured = fits[gpu]
        checks.append(
            Check(
                gpu,
                collective,
                ranks,
                size,
                float(row["time_us"]) * 1e-6,
                measured.seconds(collective, ranks, size),
                datasheet_seconds(collective, ranks, size, measured.datasheet_bytes_per_s),
                is_held_out_network_row(row),
            )
        )
    return checks


def errors(checks: list[Check], attribute: str = "moesim_s") -> np.ndarray:
    """|predicted / measured - 1| of each check."""
    return np.array([abs(getattr(check, attribute) / check.measured_s - 1) for check in checks])


def summary(checks: list[Check], attribute: str = "moesim_s") -> str:
    if not checks:
        return "-"
    values = errors(checks, attribute)
    return f"{np.median(values):.1%} / {np.percentile(values, 90):.1%}"


def write_fits(fits: dict[str, MeasuredCollectives]) -> list[Path]:
    """Write each GPU's fit where `collective_tables.shipped` reads it."""
    MEASURED.mkdir(exist_ok=True)
    paths = []
    for gpu, measured in fits.items():
        path = MEASURED / f"nccl_{gpu}.json"
        path.write_text(json.dumps(measured.to_json(), indent=1) + "\n")
        paths.append(path)
    return paths
