"""Fitting `GroupedGemmModel` to measured kernels: least squares of log time by the Nelder-Mead simplex.

A grouped model is fitted to forward products and gradients together (the weight
gradient alone, or a whole backward: the input gradient, a forward product of the
transposed shape, plus the weight gradient), for each candidate tile shape. A plain GEMM model is the one-group case
whose library picks its tile from `DENSE_TILES` and may split the contraction.
Errors are relative (`predicted / measured - 1`); fitting the log keeps small and large
kernels equally weighted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from moesim.cost.grouped import GroupedGemmModel

GROUPED_TILES = ((128, 128), (128, 256), (64, 128))
"""Tile shapes tried for a grouped kernel (one is kept: CUTLASS grouped kernels use one per launch)."""
DENSE_TILES = ((128, 128), (128, 256), (256, 128), (64, 128), (64, 256), (128, 64), (64, 64))
"""Tile shapes a Hopper cuBLAS picks among for bf16 and fp8 GEMMs."""

GroupedSample = tuple[str, Sequence[float], int, int, float]
"""(kind: 'forward', 'weight_grad' or 'backward' (input and weight gradients), rows per group, inner, cols, seconds)."""


def nelder_mead(
    loss: Callable[[np.ndarray], float], start: np.ndarray, steps: int = 600, scale: float = 0.3
) -> np.ndarray:
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


def minimise_log(loss: Callable[[np.ndarray], float], start: Sequence[float]) -> np.ndarray:
    """Log-parameters minimising `loss` from positive `start` values: simplex runs of shrinking size."""
    params = np.log(np.asarray(start, dtype=float))
    for scale in (0.3, 0.1, 0.03):
        params = nelder_mead(loss, params, steps=800, scale=scale)
    return params


FORWARD_START = (0.8, 0.8, 20e-6, 3.0, 2e-6)
"""Starting values of the forward parameters: efficiencies of compute and memory, overhead, sharpness - 1, tile cost."""
WEIGHT_GRAD_START = (0.7, 0.7, 10e-6)
"""Of the weight gradient's: efficiencies of compute and memory, overhead (kept as they are without gradient
samples)."""


def _model_of(params: np.ndarray, base: GroupedGemmModel) -> GroupedGemmModel:
    """The model of log-parameters: the five forward ones, then (when fitted) the weight gradient's three."""
    values = np.exp(np.concatenate([params, np.log(WEIGHT_GRAD_START)]) if len(params) == 5 else params)
    ce, me, overhead, sharp, tile_overhead, wce, wme, woverhead = values
    return replace(
        base,
        compute_efficiency=min(ce, 1.0),
        memory_efficiency=min(me, 1.0),
        overhead_s=overhead,
        sharpness=1.0 + sharp,
        tile_overhead_s=tile_overhead,
        weight_grad_compute_efficiency=min(wce, 1.0),
        weight_grad_memory_efficiency=min(wme, 1.0),
        weight_grad_overhead_s=woverhead,
    )


def _work_arrays(base: GroupedGemmModel, samples: Sequence[GroupedSample], element_bytes: int) -> dict[str, np.ndarray]:
    """Per sample, what its time is computed from: forward waves, contraction, bytes (for the forward product or a
    backward's input gradient) and the weight gradient's steps and bytes (zero where the sample has none)."""
    columns: dict[str, list[float]] = {
        key: [] for key in ("waves", "inner", "moved", "forward", "steps", "wmoved", "wgrad")
    }
    for kind, rows, inner, cols, _ in samples:
        array = np.asarray(rows, dtype=float)
        product = (array, cols, inner) if kind == "backward" else (array, inner, cols)
        waves, _, moved = base.forward_work(*product, element_bytes)
        steps, _, wmoved = base.weight_grad_work(array, inner, cols, element_bytes)
        forward, wgrad = kind != "weight_grad", kind != "forward"
        for key, value in (
            ("waves", waves),
            ("inner", product[1]),
            ("moved", moved),
            ("forward", forward),
            ("steps", steps),
            ("wmoved", wmoved),
            ("wgrad", wgrad),
        ):
            columns[key].append(float(value))
    return {key: np.asarray(values) for key, values in columns.items()}


def _predict_arrays(model: GroupedGemmModel, work: dict[str, np.ndarray]) -> np.ndarray:
    """Every sample's seconds at once (the model's `seconds` and `weight_grad_seconds`, vectorised over samples)."""
    forward = model.time_of(
        work["waves"], model.tile_seconds(work["inner"], model.tile_rows, model.tile_cols), work["moved"]
    )
    wgrad = model.time_of(work["steps"], model.weight_grad_step_seconds(), work["wmoved"], weight_grad=True)
    return np.where(work["forward"] > 0, forward, 0.0) + np.where(work["wgrad"] > 0, wgrad, 0.0)


def relative_errors(model: GroupedGemmModel, samples: Sequence[GroupedSample], element_bytes: int = 2) -> np.ndarray:
    """`predicted / measured - 1` of every sample."""
    measured = np.array([sample[4] for sample in samples])
    return _predict_arrays(model, _work_arrays(model, samples, element_bytes)) / measured - 1.0


def fit_grouped_model(
    samples: Sequence[GroupedSample],
    peak_flops: float,
    bandwidth: float,
    sms: int,
    element_bytes: int = 2,
    tiles: Sequence[tuple[int, int]] = GROUPED_TILES,
) -> GroupedGemmModel:
    """The grouped model of the samples, every parameter fitted to all of them together (the forward's shared by the
    input gradient of a backward), for each tile shape; the best fit's tile is kept. Without gradient samples the
    weight gradient's parameters stay at their defaults."""
    measured = np.array([sample[4] for sample in samples])
    start = (*FORWARD_START, *WEIGHT_GRAD_START) if any(sample[0] != "forward" for sample in samples) else FORWARD_START
    best: tuple[float, GroupedGemmModel] | None = None
    for tile in tiles:
        base = GroupedGemmModel(peak_flops, bandwidth, sms, tile[0], tile[1])
        work = _work_arrays(base, samples, element_bytes)

        def loss(params: np.ndarray, base: GroupedGemmModel = base, work: dict[str, np.ndarray] = work) -> float:
            return float(np.mean(np.log(_predict_arrays(_model_of(params, base), work) / measured) ** 2))

        params = minimise_log(loss, start)
        value = loss(params)
        if best is None or value < best[0]:
            best = (value, _model_of(params, base))
    assert best is not None
    return best[1]


def fit_forward_then_gradient(
    forward: Sequence[GroupedSample],
    backward: Sequence[GroupedSample],
    peak_flops: float,
    bandwidth: float,
    sms: int,
    element_bytes: int = 2,
) -> GroupedGemmModel:
    """The grouped model in two stages: its forward parameters fitted to the forward samples alone, then the weight
    gradient's three to the backward samples with the forward ones held. Fitted together, a backward's input
    gradient pulls the forward parameters to where they fit neither (on the H100's stream timings: big forward
    products 13-23% short)."""
    model = fit_grouped_model(forward, peak_flops, bandwidth, sms, element_bytes)
    if not backward:
        return model
    measured = np.array([sample[4] for sample in backward])
    work = _work_arrays(model, backward, element_bytes)

    def with_gradient(params: np.ndarray) -> GroupedGemmModel:
        compute, memory, overhead = np.exp(params)
        return replace(
            model,
            weight_grad_compute_efficiency=min(compute, 1.0),
            weight_grad_memory_efficiency=min(memory, 1.0),
            weight_grad_overhead_s=overhead,
        )

    def loss(params: np.ndarray) -> float:
        return float(np.mean(np.log(_predict_arrays(with_gradient(params), work) / measured) ** 2))

    return with_gradient(minimise_log(loss, WEIGHT_GRAD_START))


def fit_dense_model(
    samples: Sequence[tuple[int, int, int, float]],
    peak_flops: float,
    bandwidth: float,
    sms: int,
    element_bytes: int = 2,
) -> GroupedGemmModel:
    """The plain-GEMM model of measured `(rows, inner, cols, seconds)`: the library picks its tile and may split."""
    rows, inner, cols, measured = (np.array([float(sample[i]) for sample in samples]) for i in range(4))
    base = GroupedGemmModel(peak_flops, bandwidth, sms, dense_tiles=DENSE_TILES)

    def loss(params: np.ndarray) -> float:
        predicted = _model_of(params, base).dense_seconds(rows, inner, cols, element_bytes)  # type: ignore[arg-type]
        return float(np.mean(np.log(predicted / measured) ** 2))

    return _model_of(minimise_log(loss, FORWARD_START), base)


def dense_errors(
    model: GroupedGemmModel, samples: Sequence[tuple[int, int, int, float]], element_bytes: int = 2
) -> np.ndarray:
    """`predicted / measured - 1` of every plain GEMM sample."""
    return np.array(
        [
            float(model.dense_seconds(r, inner, cols, element_bytes)) / seconds - 1.0
            for r, inner, cols, seconds in samples
        ]
    )
