"""How much faster a GEMM runs in fp8 than in bf16, by shape and rows: measured points, or an assumption.

fp8 GEMMs (e4m3 inputs with scales, bf16 output, as DeepSeek-V3 trains) gain on the
tensor cores' doubled rate and on halved input bytes, but how much depends on the
shape and on which kernel the library picks: on an H100, 1.4-1.9x for large plain GEMMs
from about 1,024 rows, barely faster at 256 rows, and PyTorch's fp8 grouped GEMM was
slower than bf16 at 512 rows per group of small expert shapes, whatever the number of
groups (a kernel choice). So the speedup is kept as measured: `Fp8Speedup` holds
measured points (inner, cols, rows, speedup; rows per group for a grouped GEMM), takes
the nearest measured shape (in log size), averages its points of equal rows (a grouped
GEMM's group counts) and interpolates in log rows, clamped at the ends. The fp8 time is
the bf16 model's time over that speedup. Below the fewest rows measured (a decode step's
few rows per expert), where reading the weights bounds a GEMM, fp8 weights are half the
bytes: the speedup is at least what the GEMM model gives for the bytes halved
(`CostModel.fp8_speedup`), not the clamped end of a table measured where compute binds.

Without measurements the speedup is an assumption (`assumed_speedup`): a fraction
`ASSUMED_SHARE_OF_PEAK_RATIO` of the datasheet's fp8/bf16 peak ratio for large GEMMs,
falling to no gain for small ones, the shape of the H100 and H200 measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

ASSUMED_SHARE_OF_PEAK_RATIO = 0.85
"""Large fp8 GEMMs on the H100 and H200 gain 1.6-1.9x of a 2x peak ratio (the shipped tables)."""
ASSUMED_HALF_ROWS = 1024.0
"""Rows at which an assumed fp8 gain reaches half of its large-GEMM value."""


@dataclass(frozen=True)
class Fp8Speedup:
    """Measured fp8-over-bf16 speedups: `points` are (inner, cols, rows, speedup)."""

    points: tuple[tuple[float, float, float, float], ...]

    @cached_property
    def _array(self) -> np.ndarray:
        return np.asarray(self.points, dtype=float)

    def speedup(self, rows: float, inner: float, cols: float) -> float:
        """The speedup of a GEMM `[rows x inner] @ [inner x cols]` (rows per group, for a grouped GEMM)."""
        data = self._array
        distance = np.abs(np.log(data[:, :2]) - np.log([inner, cols])).sum(axis=1)
        nearest = data[np.isclose(distance, distance.min())]
        sizes = np.unique(nearest[:, 2])
        means = [float(nearest[nearest[:, 2] == size, 3].mean()) for size in sizes]
        return float(np.interp(np.log(max(rows, 1.0)), np.log(sizes), means))

    def fewest_rows(self, inner: float, cols: float) -> float:
        """The fewest rows measured of the shape nearest `inner x cols` (below them the table says nothing)."""
        data = self._array
        distance = np.abs(np.log(data[:, :2]) - np.log([inner, cols])).sum(axis=1)
        return float(data[np.isclose(distance, distance.min()), 2].min())

    def errors(self) -> np.ndarray:
        """Relative error of each point's speedup as the lookup gives it (averaging equal rows of a shape)."""
        return np.asarray([self.speedup(point[2], point[0], point[1]) / point[3] - 1.0 for point in self.points])

    def leave_one_out_errors(self) -> np.ndarray:
        """Relative error of each point's speedup predicted from the others (how well the table generalises)."""
        errors = []
        for index, point in enumerate(self.points):
            others = Fp8Speedup(self.points[:index] + self.points[index + 1 :])
            errors.append(others.speedup(point[2], point[0], point[1]) / point[3] - 1.0)
        return np.asarray(errors)

    def as_list(self) -> list[list[float]]:
        return [list(point) for point in self.points]

    @classmethod
    def from_list(cls, points: Sequence[Sequence[float]]) -> "Fp8Speedup":
        return cls(tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in points))


def assumed_speedup(rows: float, peak_ratio: float) -> float:
    """The assumed fp8 gain of a GEMM with `rows` rows on a GPU whose fp8 peak is `peak_ratio` x its bf16 peak."""
    large = max(1.0, ASSUMED_SHARE_OF_PEAK_RATIO * peak_ratio)
    return 1.0 + (large - 1.0) * rows / (rows + ASSUMED_HALF_ROWS)
