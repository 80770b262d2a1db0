"""Kernel micro-benchmarks of one device for the GPU cost model: grouped GEMMs and their gradients, GEMMs, copies.

Each benchmark is timed as the device runs it (CUDA events on a GPU, the host clock on
the CPU), its repetitions spread over rounds that visit every benchmark in turn
(`moesim.validation.timing.interleaved_samples`), and the median kept.

* Grouped GEMMs (`torch._grouped_mm`, the kernel of the executor's experts): for several
  `(inner, cols)` shapes, group counts and rows per group, uniform and Zipf-skewed loads
  (the same total rows, one expert much busier than the others), the forward product and
  the weight gradient alone (autograd with only the weights requiring a gradient); the
  input gradient is a forward product of the transposed shape. `GroupedGemmModel` is
  fitted to them.
* GEMMs `[rows x inner] @ [inner x cols]` over rows for a few shapes: the dense
  efficiency curve (shared experts, the router's projection).
* A large device copy: bytes read + written per second.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from moesim.cost.gemm_fit import GroupedSample, dense_errors, fit_dense_model, fit_grouped_model, relative_errors
from moesim.cost.grouped import GroupedGemmModel
from moesim.validation.timing import interleaved_samples

GROUPED_SHAPES_GPU = ((2560, 3072), (3072, 2560), (1536, 5120), (5120, 1536), (1024, 2048), (2048, 640))
"""(inner, cols) of the calibration grouped GEMMs: up and down projections, none a validation layer's."""
GROUPED_GROUPS_GPU = (8, 32, 96)
GROUPED_ROWS_GPU = (32, 256, 1024)
GROUPED_WIDE_GPU = ((3584, 12288), (12288, 3584))
"""Few large experts (the Mixtral and DBRX kind), in groups of 12 at 16-512 rows: weight-bound to compute-bound."""
GROUPED_HEAVY_GPU = ((4608, 16384), (8192, 4608))
"""Gigabytes of expert weights streamed for few rows (24 groups at 32 and 256 rows): the weight-bound extreme."""


def skewed_rows(groups: int, rows_per_group: int, skew: float) -> list[int]:
    """Rows per group summing to groups x rows_per_group, Zipf(skew) over the groups (0 = uniform)."""
    total = groups * rows_per_group
    if skew == 0:
        return [rows_per_group] * groups
    weights = 1.0 / np.arange(1, groups + 1) ** skew
    rows = np.floor(weights / weights.sum() * total).astype(int)
    rows[0] += total - rows.sum()
    return [int(value) for value in rows]


def grouped_cases(device: str, quick: bool) -> list[tuple[str, list[int], int, int]]:
    """(kind, rows per group, inner, cols) of every grouped benchmark."""
    if device == "cuda" and not quick:
        shapes, groups, rows = GROUPED_SHAPES_GPU, GROUPED_GROUPS_GPU, GROUPED_ROWS_GPU
    else:
        shapes, groups, rows = ((64, 96), (96, 32)), (4, 12), (8, 64)
    combinations = list(itertools.product(shapes, groups, rows, (0.0, 1.2)))
    if device == "cuda" and not quick:
        combinations += list(itertools.product(GROUPED_WIDE_GPU, (12,), (16, 128, 512), (0.0, 1.2)))
        combinations += list(itertools.product(GROUPED_HEAVY_GPU, (24,), (32, 256), (0.0, 1.2)))
    cases = []
    for (inner, cols), count, per_group, skew in combinations:
        loads = skewed_rows(count, per_group, skew)
        cases += [("forward", loads, inner, cols), ("weight_grad", loads, inner, cols)]
    return cases


def _grouped_tasks(
    cases: Sequence[tuple[str, list[int], int, int]], weights: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> dict[int, Callable[[], Any]]:
    """Runnable benchmarks of cases that share one weight tensor [groups, inner, cols]."""
    tasks: dict[int, Callable[[], Any]] = {}
    generator = torch.Generator(device=device).manual_seed(7919)
    trainable = weights.detach().clone().requires_grad_(True)
    for index, (kind, loads, inner, _) in enumerate(cases):
        tokens = torch.randn(sum(loads), inner, generator=generator, device=device).to(dtype)
        offsets = torch.cumsum(torch.tensor(loads, device=device), 0).to(torch.int32)
        if kind == "forward":
            tasks[index] = lambda tokens=tokens, offsets=offsets: torch._grouped_mm(tokens, weights, offs=offsets)
            continue
        out = torch._grouped_mm(tokens, trainable, offs=offsets)
        grad = torch.randn_like(out)
        tasks[index] = lambda out=out, grad=grad: torch.autograd.grad(out, trainable, grad, retain_graph=True)
    return tasks


def event_synchronizer(device: torch.device) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.type == "cuda" else None


def measure_grouped(
    device: torch.device,
    dtype: torch.dtype,
    cases: Sequence[tuple[str, list[int], int, int]],
    rounds: int,
    repeats: int,
) -> list[GroupedSample]:
    """Median seconds of every grouped case: (kind, rows per group, inner, cols, seconds).

    Cases that share a weight shape run as one block (their weights allocated once, their
    runs interleaved), one block after another, so the memory held is one block's.
    """
    blocks: dict[tuple[int, int, int], list[int]] = {}
    for index, (_, loads, inner, cols) in enumerate(cases):
        blocks.setdefault((len(loads), inner, cols), []).append(index)
    seconds: dict[int, float] = {}
    for (groups, inner, cols), members in blocks.items():
        weights = torch.randn(groups, inner, cols, device=device).to(dtype)
        tasks = _grouped_tasks([cases[index] for index in members], weights, device, dtype)
        samples = interleaved_samples(tasks, rounds, repeats, event_synchronizer(device), device=device)
        seconds.update({members[local]: statistics.median(values) for local, values in samples.items()})
        del tasks, weights
    return [(kind, loads, inner, cols, seconds[index]) for index, (kind, loads, inner, cols) in enumerate(cases)]


DENSE_SHAPES_GPU = ((2560, 3072), (5120, 1536), (3072, 10240), (1536, 1024), (5120, 3072))
DENSE_ROWS_GPU = (64, 256, 1024, 4096, 16384)
ROUTER_SHAPES_GPU = ((3072, 8), (5120, 16), (2560, 48), (3584, 96), (5120, 160), (1536, 192))
"""(hidden, experts) of router-like skinny GEMMs (bound by reading the tokens), none a validation layer's."""
ROUTER_ROWS_GPU = (1024, 8192, 32768)


def measure_dense(
    device: torch.device,
    dtype: torch.dtype,
    shapes: Sequence[tuple[int, int]],
    rows: Sequence[int],
    rounds: int,
    repeats: int,
) -> list[dict[str, float]]:
    """Median seconds of `[rows x inner] @ [inner x cols]` for every shape and row count."""
    tasks: dict[tuple[int, int, int], Callable[[], Any]] = {}
    for inner, cols in shapes:
        weight = torch.randn(inner, cols, device=device).to(dtype)
        for count in rows:
            tokens = torch.randn(count, inner, device=device).to(dtype)
            tasks[(count, inner, cols)] = lambda tokens=tokens, weight=weight: tokens @ weight
    samples = interleaved_samples(tasks, rounds, repeats, event_synchronizer(device), device=device)
    return [
        {"rows": count, "inner": inner, "cols": cols, "seconds": statistics.median(samples[(count, inner, cols)])}
        for count, inner, cols in tasks
    ]


def measure_copy(device: torch.device, megabytes: int, rounds: int, repeats: int) -> float:
    """Bytes read + written per second by a device copy of `megabytes`."""
    source = torch.empty(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    samples = interleaved_samples(
        {0: lambda: target.copy_(source)}, rounds, repeats, event_synchronizer(device), device=device
    )
    return 2 * megabytes * 2**20 / statistics.median(samples[0])


def measure_kernels(device: str, quick: bool, on_step: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Every kernel benchmark of this module on `device`; what the profile's GPU models are fitted to."""
    step = on_step or (lambda _: None)
    target = torch.device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    rounds, repeats = (2, 2) if quick else (3, 3)
    step("copy bandwidth")
    copy = measure_copy(target, 64 if quick or target.type != "cuda" else 2048, rounds, repeats)
    step("dense GEMMs")
    if target.type == "cuda" and not quick:
        dense = measure_dense(target, dtype, DENSE_SHAPES_GPU, DENSE_ROWS_GPU, rounds, repeats)
        dense += measure_dense(target, dtype, ROUTER_SHAPES_GPU, ROUTER_ROWS_GPU, rounds, repeats)
    else:
        dense = measure_dense(target, dtype, ((64, 96), (96, 64), (64, 8)), (16, 256), rounds, repeats)
    step("grouped GEMMs and their weight gradients")
    grouped = measure_grouped(target, dtype, grouped_cases(device, quick), rounds, repeats)
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "copy_bytes_per_s": copy,
        "dense": dense,
        "grouped": [
            {"kind": kind, "rows": loads, "inner": inner, "cols": cols, "seconds": seconds}
            for kind, loads, inner, cols, seconds in grouped
        ],
        "sms": torch.cuda.get_device_properties(target).multi_processor_count if target.type == "cuda" else 1,
    }


def dense_peak(kernels: dict[str, Any]) -> float:
    """The best dense GEMM rate measured (FLOP/s): the peak the models' efficiencies are relative to."""
    return max(2.0 * row["rows"] * row["inner"] * row["cols"] / row["seconds"] for row in kernels["dense"])


def dense_model_from(kernels: dict[str, Any]) -> tuple[GroupedGemmModel, float]:
    """The shape-aware dense GEMM model fitted to the measured GEMMs, with its median error on them."""
    samples = [(row["rows"], row["inner"], row["cols"], row["seconds"]) for row in kernels["dense"]]
    model = fit_dense_model(samples, dense_peak(kernels), kernels["copy_bytes_per_s"], kernels["sms"])
    return model, float(np.median(np.abs(dense_errors(model, samples))))


def grouped_model_from(kernels: dict[str, Any]) -> tuple[GroupedGemmModel, float]:
    """`GroupedGemmModel` fitted to the measured grouped GEMMs, with its median error on them."""
    samples: list[GroupedSample] = [
        (row["kind"], row["rows"], row["inner"], row["cols"], row["seconds"]) for row in kernels["grouped"]
    ]
    model = fit_grouped_model(samples, dense_peak(kernels), kernels["copy_bytes_per_s"], kernels["sms"])
    return model, float(np.median(np.abs(relative_errors(model, samples))))
