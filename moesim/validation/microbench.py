"""The calibration's micro-benchmarks: GEMM rates by rows, copy bandwidth, the FFN's backward/forward ratio, the
per-kernel launch, and `all_to_all_single` against bytes (fitted to latency + bytes / bandwidth), each timed as
the median of repetitions spread over rounds (`moesim.validation.timing`)."""

from __future__ import annotations

import platform
import statistics
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from moesim.executor.launch import spawn
from moesim.executor.layer import activate
from moesim.validation.timing import interleaved_samples, median_seconds

GEMM_SHAPES = ((96, 384), (192, 768), (384, 1536), (640, 1280), (384, 192), (768, 384), (1536, 640))
"""(inner, cols) of the calibration GEMMs: up- and down-projection shapes, none of the validation grid's."""


def device_name(device: torch.device, ranks: int, threads: Optional[int] = None) -> str:
    """The profile's name: the GPU's, or on CPU the machine, the ranks sharing it and each rank's threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    threads = threads or torch.get_num_threads()
    plural_ranks, plural_threads = ("s" if ranks > 1 else ""), ("s" if threads > 1 else "")
    return f"cpu-{platform.machine()}-{ranks}rank{plural_ranks}-{threads}thread{plural_threads}-each"


def _synchronizer(device: torch.device) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.type == "cuda" else None


def measure_gemm_rates(
    device: torch.device,
    rows: Sequence[int],
    rounds: int,
    repeats: int,
    shapes: Sequence[tuple[int, int]] = GEMM_SHAPES,
) -> list[float]:
    """FLOP/s at each row count: the median over `shapes` of each shape's median rate."""
    tasks: dict[tuple[int, int], Callable[[], Any]] = {}
    for shape_index, (inner, cols) in enumerate(shapes):
        weight = torch.randn(inner, cols, device=device)
        for count in rows:
            tokens = torch.randn(count, inner, device=device)
            tasks[(shape_index, count)] = lambda tokens=tokens, weight=weight: tokens @ weight
    samples = interleaved_samples(tasks, rounds, repeats, _synchronizer(device))
    return [
        float(
            np.median(
                [
                    2.0 * count * inner * cols / statistics.median(samples[(index, count)])
                    for index, (inner, cols) in enumerate(shapes)
                ]
            )
        )
        for count in rows
    ]


def measure_memory(device: torch.device, megabytes: Sequence[int], rounds: int, repeats: int) -> float:
    """Bytes per second (read + write) of copies: the median over the sizes."""
    tasks = {}
    for size in megabytes:
        source = torch.empty(size * 2**20 // 4, device=device)
        target = torch.empty_like(source)
        tasks[size] = lambda source=source, target=target: target.copy_(source)
    samples = interleaved_samples(tasks, rounds, repeats, _synchronizer(device))
    return float(np.median([2 * size * 2**20 / statistics.median(samples[size]) for size in megabytes]))


BACKWARD_SIZES = ((768, 192), (3072, 384), (1536, 768))
"""(rows, hidden) of the SwiGLU FFNs (ffn = 2 x hidden) whose backward the calibration times."""


def measure_backward_factor(device: torch.device, sizes: Sequence[tuple[int, int]], rounds: int, repeats: int) -> float:
    """An FFN's backward time (input and weight gradients) over its forward time under autograd; median over sizes."""
    tasks: dict[tuple[int, str], Callable[[], Any]] = {}
    for index, (rows, hidden) in enumerate(sizes):
        x = torch.randn(rows, hidden, device=device, requires_grad=True)
        up = torch.randn(hidden, 4 * hidden, device=device, requires_grad=True)
        down = torch.randn(2 * hidden, hidden, device=device, requires_grad=True)

        def forward(
            x: torch.Tensor = x, up: torch.Tensor = up, down: torch.Tensor = down, hidden: int = hidden
        ) -> torch.Tensor:
            return activate(x @ up, "swiglu", 2 * hidden) @ down

        tasks[(index, "forward")] = forward
        tasks[(index, "both")] = lambda forward=forward: forward().sum().backward()
    samples = interleaved_samples(tasks, rounds, repeats, _synchronizer(device))
    ratios = []
    for index in range(len(sizes)):
        forward_s = statistics.median(samples[(index, "forward")])
        ratios.append((statistics.median(samples[(index, "both")]) - forward_s) / forward_s)
    return float(np.median(ratios))


def measure_launch(device: torch.device, repeats: int) -> float:
    tiny = torch.zeros(1, device=device)
    return median_seconds(lambda: tiny.add_(1.0), repeats * 20, _synchronizer(device))


def _alltoall_worker(rank: int, world: int, sizes: list[int], rounds: int, repeats: int) -> list[float]:
    device = torch.device(f"cuda:{rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    tasks = {}
    for size in sizes:
        data = torch.zeros(size // 4, device=device)
        out = torch.empty_like(data)
        tasks[size] = lambda out=out, data=data: dist.all_to_all_single(out, data)
    dist.barrier()
    samples = interleaved_samples(tasks, rounds, repeats, _synchronizer(device))
    return [statistics.median(samples[size]) for size in sizes]


def measure_alltoall(ranks: int, sizes: Sequence[int], rounds: int, repeats: int) -> list[tuple[int, float]]:
    """(bytes each rank sends in all, seconds) of all_to_all_single over spawned ranks; the slowest rank counts."""
    per_rank = spawn(_alltoall_worker, ranks, [int(size) for size in sizes], rounds, repeats)
    return [(int(size), max(times[index] for times in per_rank)) for index, size in enumerate(sizes)]


def fit_latency_bandwidth(points: Sequence[tuple[int, float]], ranks: int) -> tuple[float, float]:
    """Least squares seconds = latency + bytes x (ranks-1)/ranks / bandwidth; returns (latency_s, bytes_per_s)."""
    sent = np.array([size * (ranks - 1) / ranks for size, _ in points], dtype=float)
    seconds = np.array([value for _, value in points], dtype=float)
    design = np.stack([np.ones_like(sent), sent], axis=1)
    (latency, per_byte), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    return max(float(latency), 0.0), 1.0 / max(float(per_byte), 1e-30)
