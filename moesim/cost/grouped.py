"""`GroupedGemmModel`: the time of a GEMM or grouped expert GEMM on a GPU, from its tiles and waves.

Production MoE layers run a rank's experts as one grouped GEMM per projection
(Megatron-Core's `GroupedMLP`, `torch._grouped_mm`: CUTLASS on Hopper), not as separate
GEMMs one after another. The kernel cuts each group's output `[rows_g x N]` into tiles of
`tile_rows x tile_cols`, and a persistent grid of `sms` thread blocks works through all
tiles of all groups together. So, for groups with rows m_g over an `[m_g x K] @ [K x N]`
product:

    tiles    = sum_g ceil(m_g / tile_rows) x ceil(N / tile_cols)
    waves    = ceil(tiles / sms)
    compute  = waves x (2 x tile_rows x tile_cols x K / (peak / sms x compute_efficiency) + tile_overhead)
    memory   = bytes x (active groups x K x N  +  sum_g m_g x (K + N)) / (bandwidth x memory_efficiency)
    seconds  = overhead + (compute^p + memory^p)^(1/p)

Compute counts whole tiles in whole waves (a group of 16 rows costs a tile of
`tile_rows`; 133 tiles on 132 multiprocessors cost two waves), and each tile pays a fixed
prologue and epilogue (`tile_overhead_s`: why a short contraction, inner 768, runs far
below peak); memory reads each active expert's weights once, and each row once in and
once out. The p-norm (`sharpness`) blends the two bounds where they meet, as measured
kernels do. Skewed loads come out by construction: a hot expert adds its own tiles, an
idle one costs nothing.

A plain GEMM (`dense_seconds`, cuBLAS) is the one-group case with two freedoms the
library uses: it picks the fastest of several tile shapes (`dense_tiles`), and when the
output has fewer tiles than multiprocessors it splits the contraction over them
(stream-K / split-K: no wave quantisation, partial sums written and read once more in
fp32). Both are choices of the library, so the model takes the fastest.

The weight gradient of a grouped projection (`[K x m_g] @ [m_g x N]` per group, in the
backward pass) contracts over the rows instead: each of the `K x N` output tiles of an
active group runs `ceil(m_g / 64)` steps of 64 rows, and every group's gradient, idle or
not, is written (`weight_grad_seconds`). A plain GEMM's weight gradient is a plain GEMM
of the shape `[K x m] @ [m x N]` and needs nothing more.

`element_bytes` is the size of an input element (2 for bf16, 1 for fp8); outputs are
bf16 (2 bytes) in both cases, as in production fp8 recipes. The parameters are fitted
(`moesim.cost.gemm_fit`) to measured kernels: the device's own calibration (`moesim
calibrate --device cuda`) or the shipped kernel tables (`moesim.cost`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

CONTRACTION_STEP = 64
"""Rows per main-loop step of the weight-gradient GEMM (the K tile of Hopper bf16 kernels)."""
OUTPUT_BYTES = 2
"""Outputs are written in bf16, whatever the inputs' precision."""
PARTIAL_SUM_BYTES = 8
"""A split contraction writes and reads back each output element once in fp32."""


@dataclass(frozen=True)
class GroupedGemmModel:
    """Tile and wave roofline of a (grouped) GEMM; see the module docstring."""

    peak_flops: float
    bandwidth_bytes_per_s: float
    sms: int = 132
    tile_rows: int = 128
    tile_cols: int = 128
    compute_efficiency: float = 0.8
    memory_efficiency: float = 0.7
    overhead_s: float = 10e-6
    sharpness: float = 4.0
    weight_grad_compute_efficiency: float = 0.7
    weight_grad_memory_efficiency: float = 0.7
    weight_grad_overhead_s: float = 10e-6
    tile_overhead_s: float = 0.0
    dense_tiles: tuple[tuple[int, int], ...] = ()
    """Tile shapes a plain-GEMM library picks among (empty: the one tile above, no split contraction)."""

    def _moved(
        self, weights: float, rows: Any, inner: int, cols: int, element_bytes: float, weight_bytes: float | None = None
    ) -> Any:
        """Bytes moved: each active group's weights (`weight_bytes` each, default `element_bytes`: a weight-only
        format reads its own size), each row in and out."""
        weight = element_bytes if weight_bytes is None else weight_bytes
        return weight * weights * inner * cols + element_bytes * rows * inner + OUTPUT_BYTES * rows * cols

    def _blend(self, compute: Any, memory: Any) -> Any:
        p = self.sharpness
        return (compute**p + memory**p) ** (1.0 / p)

    def tile_seconds(self, inner: Any, tile_rows: int, tile_cols: int) -> Any:
        """Compute time of one output tile contracting over `inner` (a number or an array), its fixed cost included."""
        return (
            2.0 * tile_rows * tile_cols * inner / (self.peak_flops / self.sms * self.compute_efficiency)
            + self.tile_overhead_s
        )

    def weight_grad_step_seconds(self) -> float:
        """Compute time of one `CONTRACTION_STEP`-row step of a weight-gradient output tile."""
        return (
            2.0
            * self.tile_rows
            * self.tile_cols
            * CONTRACTION_STEP
            / (self.peak_flops / self.sms * self.weight_grad_compute_efficiency)
        )

    def forward_work(
        self, rows: np.ndarray, inner: int, cols: int, element_bytes: int = 2, weight_bytes: float | None = None
    ) -> tuple[float, float, float]:
        """(waves of tiles, seconds per wave of compute, bytes moved) of a grouped product."""
        tiles = float(np.ceil(rows / self.tile_rows).sum() * np.ceil(cols / self.tile_cols))
        active = float(np.count_nonzero(rows))
        moved = self._moved(active, float(rows.sum()), inner, cols, element_bytes, weight_bytes)
        return float(np.ceil(tiles / self.sms)), self.tile_seconds(inner, self.tile_rows, self.tile_cols), float(moved)

    def weight_grad_work(
        self, rows: np.ndarray, inner: int, cols: int, element_bytes: int = 2
    ) -> tuple[float, float, float]:
        """The same for the weight gradient: steps of `CONTRACTION_STEP` rows per output tile, spread over the grid."""
        steps = np.ceil(rows / CONTRACTION_STEP)
        output_tiles = np.ceil(inner / self.tile_rows) * np.ceil(cols / self.tile_cols)
        spread = max(float(steps.sum() * output_tiles / self.sms), float(steps.max(initial=0.0)))
        moved = element_bytes * rows.sum() * (inner + cols) + OUTPUT_BYTES * rows.size * inner * cols
        return spread, self.weight_grad_step_seconds(), float(moved)

    def time_of(self, units: Any, unit_seconds: Any, moved: Any, weight_grad: bool = False) -> Any:
        """Seconds from (compute units per multiprocessor, seconds per unit, bytes moved); numbers or arrays."""
        memory_efficiency, overhead = (
            (self.weight_grad_memory_efficiency, self.weight_grad_overhead_s)
            if weight_grad
            else (self.memory_efficiency, self.overhead_s)
        )
        return overhead + self._blend(units * unit_seconds, moved / (self.bandwidth_bytes_per_s * memory_efficiency))

    def seconds(
        self,
        rows: Sequence[float] | np.ndarray,
        inner: int,
        cols: int,
        element_bytes: int = 2,
        weight_bytes: float | None = None,
    ) -> float:
        """One grouped GEMM: groups with `rows` rows each, `[rows x inner] @ [inner x cols]` (weights of
        `weight_bytes` each where they are stored smaller than they are computed)."""
        rows = np.asarray(rows, dtype=float)
        if rows.sum() <= 0:
            return self.overhead_s
        return float(self.time_of(*self.forward_work(rows, inner, cols, element_bytes, weight_bytes)))

    def weight_grad_seconds(
        self, rows: Sequence[float] | np.ndarray, inner: int, cols: int, element_bytes: int = 2
    ) -> float:
        """The weight gradient of that GEMM: per group `[inner x rows_g] @ [rows_g x cols]`, every group written."""
        rows = np.asarray(rows, dtype=float)
        return float(self.time_of(*self.weight_grad_work(rows, inner, cols, element_bytes), weight_grad=True))

    def dense_seconds(self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2) -> np.ndarray:
        """Plain GEMMs (one group each), vectorised over `rows`: the fastest tile, split contraction where it helps."""
        rows = np.asarray(rows, dtype=float)
        memory = self._moved(1.0, rows, inner, cols, element_bytes) / (
            self.bandwidth_bytes_per_s * self.memory_efficiency
        )
        best = None
        for tile_rows, tile_cols in self.dense_tiles or ((self.tile_rows, self.tile_cols),):
            tiles = np.ceil(rows / tile_rows) * np.ceil(cols / tile_cols)
            waves = np.ceil(tiles / self.sms)
            per_tile = self.tile_seconds(inner, tile_rows, tile_cols)
            compute = waves * per_tile
            if self.dense_tiles:  # split contraction: the padded work spread evenly, partial sums through memory
                split = (
                    tiles / self.sms * (per_tile - self.tile_overhead_s)
                    + waves * self.tile_overhead_s
                    + tiles
                    * tile_rows
                    * tile_cols
                    * PARTIAL_SUM_BYTES
                    / (self.bandwidth_bytes_per_s * self.memory_efficiency)
                )
                compute = np.minimum(compute, split)
            busy = self._blend(compute, memory)
            best = busy if best is None else np.minimum(best, busy)
        return np.where(rows > 0, self.overhead_s + best, 0.0)

    def dense_weight_grad_seconds(
        self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2
    ) -> np.ndarray:
        """A plain GEMM's weight gradient `[inner x rows] @ [rows x cols]`: a plain GEMM contracting over the rows, at
        the weight gradient's efficiencies and overhead (its operands arrive transposed)."""
        rows = np.asarray(rows, dtype=float)
        gradient = replace(
            self,
            compute_efficiency=self.weight_grad_compute_efficiency,
            memory_efficiency=self.weight_grad_memory_efficiency,
            overhead_s=self.weight_grad_overhead_s,
        )
        seconds = gradient.dense_seconds(np.full_like(rows, inner), rows, cols, element_bytes)  # type: ignore[arg-type]
        return np.where(rows > 0, seconds, 0.0)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dense_tiles"] = [list(tile) for tile in self.dense_tiles]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroupedGemmModel":
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls.__dataclass_fields__:
                continue
            if key == "dense_tiles":
                values[key] = tuple((int(a), int(b)) for a, b in value)
            else:
                values[key] = int(value) if key in ("sms", "tile_rows", "tile_cols") else float(value)
        return cls(**values)
