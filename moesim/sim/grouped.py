"""`GroupedGemmModel`: the time of one grouped expert GEMM on a GPU, from every group's rows together.

Production MoE layers run a rank's experts as one grouped GEMM per projection
(Megatron-Core's `GroupedMLP`, `torch._grouped_mm`: CUTLASS on Hopper), not as separate
GEMMs one after another. The kernel cuts each group's output `[rows_g x N]` into tiles of
`tile_rows x tile_cols`, and a persistent grid of `sms` thread blocks works through all
tiles of all groups together. So, for groups with rows m_g over an `[m_g x K] @ [K x N]`
product:

    tiles    = sum_g ceil(m_g / tile_rows) x ceil(N / tile_cols)
    compute  = ceil(tiles / sms) x (2 x tile_rows x tile_cols x K) / (peak / sms x compute_efficiency)
    memory   = 2 bytes x (active groups x K x N  +  sum_g m_g x (K + N)) / (bandwidth x memory_efficiency)
    seconds  = overhead + (compute^p + memory^p)^(1/p)

Compute counts whole tiles in whole waves (a group of 16 rows costs a tile of
`tile_rows`; 133 tiles on 132 multiprocessors cost two waves); memory reads each active
expert's weights once, and each row once in and once out. The p-norm (`sharpness`)
blends the two bounds where they meet, as measured kernels do. Skewed loads come out by
construction: a hot expert adds its own tiles, an idle one costs nothing.

The weight gradient of the same projection (`[K x m_g] @ [m_g x N]` per group, in the
backward pass) contracts over the rows instead: each of the `K x N` output tiles of an
active group runs `ceil(m_g / 64)` steps of 64 rows, and every group's gradient, idle or
not, is written (`weight_grad_seconds`).

The parameters are fitted to measured grouped GEMMs (`fit_grouped_model`): the device's
own calibration (`moesim validate --device cuda` measures them) or the shipped kernel
tables. A plain GEMM is the one-group case; fitted to measured GEMMs (`fit_dense_model`)
the same roofline describes cuBLAS (`dense_seconds`), whose tile choice differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

CONTRACTION_STEP = 64
"""Rows per main-loop step of the weight-gradient GEMM (the K tile of Hopper bf16 kernels)."""


@dataclass(frozen=True)
class GroupedGemmModel:
    """Tile and wave roofline of a grouped GEMM; see the module docstring."""

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

    def forward_work(self, rows: np.ndarray, inner: int, cols: int, element_bytes: int = 2) -> tuple[float, float, float]:
        """(waves of tiles, FLOPs per tile, bytes moved) of a grouped product: what its time is computed from."""
        tiles = float(np.ceil(rows / self.tile_rows).sum() * np.ceil(cols / self.tile_cols))
        moved = element_bytes * (np.count_nonzero(rows) * inner * cols + rows.sum() * (inner + cols))
        return float(np.ceil(tiles / self.sms)), 2.0 * self.tile_rows * self.tile_cols * inner, float(moved)

    def weight_grad_work(self, rows: np.ndarray, inner: int, cols: int, element_bytes: int = 2) -> tuple[float, float, float]:
        """The same for the weight gradient: steps of `CONTRACTION_STEP` rows per output tile, spread over the grid."""
        steps = np.ceil(rows / CONTRACTION_STEP)
        output_tiles = np.ceil(inner / self.tile_rows) * np.ceil(cols / self.tile_cols)
        spread = float(steps.sum() * output_tiles / self.sms)
        moved = element_bytes * (rows.size * inner * cols + rows.sum() * (inner + cols))
        return max(spread, float(steps.max(initial=0.0))), 2.0 * self.tile_rows * self.tile_cols * CONTRACTION_STEP, float(moved)

    def time_of(self, units: Any, unit_flops: Any, moved: Any, weight_grad: bool = False) -> Any:
        """Seconds from (compute units per multiprocessor, FLOPs per unit, bytes moved); numbers or arrays."""
        compute_efficiency, memory_efficiency, overhead = (
            (self.weight_grad_compute_efficiency, self.weight_grad_memory_efficiency, self.weight_grad_overhead_s)
            if weight_grad else (self.compute_efficiency, self.memory_efficiency, self.overhead_s))
        compute = units * unit_flops / (self.peak_flops / self.sms * compute_efficiency)
        memory = moved / (self.bandwidth_bytes_per_s * memory_efficiency)
        p = self.sharpness
        return overhead + (compute**p + memory**p) ** (1.0 / p)

    def seconds(self, rows: Sequence[float] | np.ndarray, inner: int, cols: int, element_bytes: int = 2) -> float:
        """One grouped GEMM: groups with `rows` rows each, `[rows x inner] @ [inner x cols]`."""
        rows = np.asarray(rows, dtype=float)
        if rows.sum() <= 0:
            return self.overhead_s
        return float(self.time_of(*self.forward_work(rows, inner, cols, element_bytes)))

    def weight_grad_seconds(self, rows: Sequence[float] | np.ndarray, inner: int, cols: int, element_bytes: int = 2) -> float:
        """The weight gradient of that GEMM: per group `[inner x rows_g] @ [rows_g x cols]`, every group written."""
        rows = np.asarray(rows, dtype=float)
        return float(self.time_of(*self.weight_grad_work(rows, inner, cols, element_bytes), weight_grad=True))

    def dense_seconds(self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2) -> np.ndarray:
        """Plain GEMMs (one group each), vectorised over `rows`: the same tile and wave roofline."""
        rows = np.asarray(rows, dtype=float)
        waves = np.ceil(np.ceil(rows / self.tile_rows) * np.ceil(cols / self.tile_cols) / self.sms)
        moved = element_bytes * (inner * cols + rows * (inner + cols))
        return np.where(rows > 0, self.time_of(waves, 2.0 * self.tile_rows * self.tile_cols * inner, moved), 0.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroupedGemmModel":
        return cls(**{key: (int(value) if key in ("sms", "tile_rows", "tile_cols") else float(value))
                      for key, value in data.items() if key in cls.__dataclass_fields__})


def nelder_mead(loss: Callable[[np.ndarray], float], start: np.ndarray, steps: int = 600, scale: float = 0.3) -> np.ndarray:
    """Minimise `loss` from `start` by the Nelder-Mead simplex (enough for a handful of parameters)."""
    points = [start] + [start + scale * np.eye(len(start))[i] for i in range(len(start))]
    values = [loss(point) for point in points]
    for _ in range(steps):
        order = np.argsort(values)
        points, values = [points[i] for i in order], [values[i] for i in order]
        centre = np.mean(points[:-1], axis=0)
        reflected = centre + (centre - points[-1])
        value = loss(reflected)
        if value < values[0]:
            expanded = centre + 2.0 * (centre - points[-1])
            expanded_value = loss(expanded)
            points[-1], values[-1] = (expanded, expanded_value) if expanded_value < value else (reflected, value)
        elif value < values[-2]:
            points[-1], values[-1] = reflected, value
        else:
            contracted = centre + 0.5 * (points[-1] - centre)
            contracted_value = loss(contracted)
            if contracted_value < values[-1]:
                points[-1], values[-1] = contracted, contracted_value
            else:
                points = [points[0] + 0.5 * (point - points[0]) for point in points]
                values = [loss(point) for point in points]
    return points[int(np.argmin(values))]


GroupedSample = tuple[str, Sequence[float], int, int, float]
"""(kind 'forward' or 'weight_grad', rows per group, inner, cols, measured seconds)."""


def fit_grouped_model(samples: Sequence[GroupedSample], peak_flops: float, bandwidth: float, sms: int,
                      tiles: Sequence[tuple[int, int]] = ((128, 128), (128, 256), (64, 128))) -> tuple[GroupedGemmModel, float]:
    """The model (tile shape by search, efficiencies, overhead and sharpness by least squares of log time) and its median error."""
    def model_of(params: np.ndarray, tile: tuple[int, int]) -> GroupedGemmModel:
        ce, me, overhead, sharp, wce, wme, woverhead = np.exp(params)
        return GroupedGemmModel(peak_flops, bandwidth, sms, tile[0], tile[1], min(ce, 1.0), min(me, 1.0), overhead,
                                1.0 + sharp, min(wce, 1.0), min(wme, 1.0), woverhead)

    measured = np.array([sample[4] for sample in samples])
    backward = np.array([sample[0] == "weight_grad" for sample in samples])
    best: tuple[float, GroupedGemmModel] | None = None
    for tile in tiles:
        shape = GroupedGemmModel(peak_flops, bandwidth, sms, tile[0], tile[1])
        work = np.array([shape.weight_grad_work(np.asarray(rows, float), inner, cols) if kind == "weight_grad"
                         else shape.forward_work(np.asarray(rows, float), inner, cols) for kind, rows, inner, cols, _ in samples])

        def predict_all(model: GroupedGemmModel, work: np.ndarray = work) -> np.ndarray:
            forward = model.time_of(work[:, 0], work[:, 1], work[:, 2])
            return np.where(backward, model.time_of(work[:, 0], work[:, 1], work[:, 2], weight_grad=True), forward)

        def loss(params: np.ndarray, tile: tuple[int, int] = tile, predict_all: Any = predict_all) -> float:
            return float(np.mean(np.log(predict_all(model_of(params, tile)) / measured) ** 2))

        start = np.log([0.8, 0.7, 10e-6, 3.0, 0.7, 0.7, 10e-6])
        params = nelder_mead(loss, start)
        params = nelder_mead(loss, params, scale=0.1)
        value = loss(params)
        if best is None or value < best[0]:
            best = (value, model_of(params, tile))
    assert best is not None
    model = best[1]
    errors = np.abs(np.array([
        (model.weight_grad_seconds(rows, inner, cols) if kind == "weight_grad" else model.seconds(rows, inner, cols)) / seconds
        for kind, rows, inner, cols, seconds in samples]) - 1.0)
    return model, float(np.median(errors))


def fit_dense_model(samples: Sequence[tuple[int, int, int, float]], peak_flops: float, bandwidth: float,
                    sms: int) -> tuple[GroupedGemmModel, float]:
    """The same roofline fitted to plain GEMMs (rows, inner, cols, seconds): cuBLAS picks its own tiles."""
    return fit_grouped_model([("forward", [rows], inner, cols, seconds) for rows, inner, cols, seconds in samples],
                             peak_flops, bandwidth, sms, tiles=((128, 128), (128, 256), (64, 128), (256, 128)))
