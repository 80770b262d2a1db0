"""Plain FP8 GEMMs as measured: DeepGEMM's blockwise kernels on an H100, read from aiconfigurator's table.

moesim's `gemm: fp8` is DeepSeek-V3's recipe (e4m3 with 1x128 activation and 128x128 weight
block scales), whose GEMMs DeepGEMM runs. aiconfigurator times DeepGEMM's `gemm_nt_f8f8bf16` on
one H100 over 22 x 22 weight shapes (n x k, 32 to 65,536) at 256 to 32,768 rows (SGLang 0.5.14's
collection, `validation/kernels/gemm_h100_sglang.csv.gz`; the H200's the same way). The table moesim ships holds its
development weight shapes only (`gemm_tables` draw: a held-out shape's error is that of a shape the
table never saw), written by `python -m moesim.validation.gemm_tables --ship`; the H800 reads the H100's.

A GEMM's time is its FLOPs over a rate read from the table: along each measured weight shape's
curve in log rows (clamped at its ends), then weighted over the four measured shapes nearest in
log n + log k, by inverse squared distance (chosen by cross-validation within the development
shapes; `moesim.validation.gemm_tables`). A shape-fitted roofline (`gemm_fit.fit_dense_model`) misfit
DeepGEMM's irregular kernel choices by 15% at the median and 45% at p90 on the same rows, the
speedup over bf16 that moesim used before by 15% and 53%, 30% too fast below 0.05 TFLOP.
Below the table's fewest rows (decode-sized GEMMs) the caller keeps its speedup model.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

TABLES = Path(__file__).resolve().parent / "engines" / "aiconfigurator"


def table_path(gpu: str) -> Path:
    """The shipped table of a measured GPU (`h100`, `h200`)."""
    return TABLES / f"gemm_fp8_block_{gpu}_sxm.csv.gz"


def errors_path(gpu: str) -> Path:
    """Its errors on the held-out weight shapes (written with it)."""
    return TABLES / f"gemm_fp8_block_{gpu}_sxm.json"


NEAREST_SHAPES = 4
"""Measured weight shapes a GEMM's rate is weighted over."""
FP8_TABLE_GPUS = {
    "H100-SXM": ("h100", "measured"),
    "H800": ("h100", "the H100's SXM5 die and clocks; NVLink differs"),
    "H200": ("h200", "measured"),
}
"""GPU presets whose FP8 GEMMs read a measured table: (the table's GPU, on what grounds)."""


@dataclass(frozen=True)
class MeasuredGemms:
    """Measured GEMMs `(rows, inner, cols, seconds)`: rates by weight shape (`inner x cols`), interpolated."""

    rows: tuple[tuple[int, int, int, float], ...] = field(compare=False, repr=False)
    label: str = ""
    _curves: dict = field(default_factory=dict, compare=False, repr=False)
    _nearest: dict = field(default_factory=dict, compare=False, repr=False)  # (inner, cols) -> shapes and weights

    def __post_init__(self) -> None:
        curves: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
        for count, inner, cols, seconds in self.rows:
            curves[(inner, cols)].append((float(count), 2.0 * count * inner * cols / seconds))
        for shape, points in curves.items():
            points.sort()
            self._curves[shape] = (np.log([p[0] for p in points]), np.array([p[1] for p in points]))

    @cached_property
    def fewest_rows(self) -> float:
        return float(min(row[0] for row in self.rows))

    def _shapes_near(self, inner: int, cols: int) -> list[tuple[float, tuple[int, int]]]:
        """The measured weight shapes a shape's rate is read from, with their distances (found once a shape)."""
        key = (inner, cols)
        if key not in self._nearest:
            self._nearest[key] = sorted(
                (abs(np.log(inner / shape[0])) + abs(np.log(cols / shape[1])), shape) for shape in self._curves
            )[:NEAREST_SHAPES]
        return self._nearest[key]

    def rate(self, rows: np.ndarray, inner: int, cols: int) -> np.ndarray:
        """FLOP/s of `[rows x inner] @ [inner x cols]` (rows an array), from the nearest measured weight shapes."""
        distances = self._shapes_near(inner, cols)
        logs = np.log(np.maximum(rows, 1.0))
        if distances[0][0] == 0.0:
            return np.interp(logs, *self._curves[distances[0][1]])
        weights = np.array([1.0 / distance**2 for distance, _ in distances])
        rates = np.array([np.interp(logs, *self._curves[shape]) for _, shape in distances])
        return (weights[:, None] * rates.reshape(len(distances), -1)).sum(axis=0).reshape(logs.shape) / weights.sum()

    def seconds(self, rows: np.ndarray | float, inner: int, cols: int) -> np.ndarray:
        """Seconds of the GEMM(s), vectorised over `rows` (0 rows: 0 s)."""
        rows = np.asarray(rows, dtype=float)
        rate = self.rate(rows, inner, cols)
        return np.where(rows > 0, 2.0 * rows * inner * cols / rate, 0.0)


def read_table(path: Path, label: str) -> MeasuredGemms:
    """A shipped table: `m, n, k, time_us` rows (aiconfigurator's m x k activations, n x k weights)."""
    with gzip.open(path, "rt") as handle:
        rows = tuple(
            (int(row["m"]), int(row["k"]), int(row["n"]), float(row["time_us"]) / 1e6) for row in csv.DictReader(handle)
        )
    return MeasuredGemms(rows, label)


@lru_cache(maxsize=4)
def shipped_fp8_gemms(gpu_name: str) -> Optional[MeasuredGemms]:
    """The measured FP8 GEMMs a GPU preset reads (`FP8_TABLE_GPUS`), else None."""
    if gpu_name not in FP8_TABLE_GPUS:
        return None
    gpu, grounds = FP8_TABLE_GPUS[gpu_name]
    if not table_path(gpu).exists():
        return None
    label = f"measured: DeepGEMM's blockwise FP8 GEMMs on an {gpu.upper()} (aiconfigurator's table, SGLang 0.5.14)"
    if errors_path(gpu).exists():
        errors = json.loads(errors_path(gpu).read_text())["held_out"]
        label += (
            f" (held-out error median {errors['median']:.1%}, p90 {errors['p90']:.1%}, n={errors['rows']}, "
            "weight shapes never read)"
        )
    if grounds != "measured":
        label = f"derived from {gpu.upper()} ({grounds}): {label}"
    return read_table(table_path(gpu), label)
