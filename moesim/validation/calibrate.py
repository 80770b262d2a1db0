"""Calibration: measure this device and fit the simulator's `CostModel` profile to it.

Micro-benchmarks, each the median of repetitions after a warm-up:
* expert GEMMs `[rows x hidden] @ [hidden x ffn]` over a range of rows (tokens per
  expert): the best FLOP/s seen is the device's `peak_flops`, and each size's share of
  it is the efficiency curve the simulator interpolates;
* a large tensor copy for memory bandwidth (the permutation kernels are copies);
* a tiny kernel for the per-kernel launch overhead;
* `all_to_all_single` over `ranks` spawned processes against bytes per rank (gloo on CPU,
  NCCL on GPU), fitted to latency + bytes / bandwidth.

The result is a JSON profile under `validation/profiles/`, named by the device, that
`simulation.cost_profile` loads.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist


def median_seconds(work: Callable[[], Any], repeats: int, synchronize: Optional[Callable[[], None]] = None) -> float:
    work()
    times = []
    for _ in range(repeats):
        if synchronize:
            synchronize()
        started = time.perf_counter()
        work()
        if synchronize:
            synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def device_name(device: torch.device, threads: Optional[int] = None) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{threads or torch.get_num_threads()}threads-per-rank"


def measure_gemms(
    device: torch.device, hidden: int, ffn: int, rows: Sequence[int], repeats: int
) -> list[tuple[int, float]]:
    """(rows, seconds) of [rows x hidden] @ [hidden x ffn]."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    weight = torch.randn(hidden, ffn, device=device)
    results = []
    for count in rows:
        tokens = torch.randn(count, hidden, device=device)
        results.append((count, median_seconds(lambda: tokens @ weight, repeats, sync)))
    return results


def measure_memory(device: torch.device, megabytes: int, repeats: int) -> float:
    """Bytes per second of a large copy (read + write)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    source = torch.empty(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), repeats, sync)
    return 2 * source.numel() * 4 / seconds


def measure_launch(device: torch.device, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    tiny = torch.zeros(1, device=device)
    return median_seconds(lambda: tiny.add_(1.0), repeats * 20, sync)


def _alltoall_worker(rank: int, world: int, sizes: list[int], repeats: int) -> list[float]:
    device = torch.device(f"cuda:{rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    measured = []
    for size in sizes:
        data = torch.zeros(size // 4, device=device)
        out = torch.empty_like(data)

        def exchange() -> None:
            dist.all_to_all_single(out, data)

        dist.barrier()
        measured.append(median_seconds(exchange, repeats, sync))
    return measured


def measure_alltoall(ranks: int, sizes: Sequence[int], repeats: int) -> list[tuple[int, float]]:
    """(bytes each rank sends in all, seconds) of all_to_all_single over spawned ranks; the slowest rank counts."""
    from moesim.executor.launch import spawn

    per_rank = spawn(_alltoall_worker, ranks, [int(size) for size in sizes], repeats)
    return [(int(size), max(times[index] for times in per_rank)) for index, size in enumerate(sizes)]


def fit_latency_bandwidth(points: Sequence[tuple[int, float]], ranks: int) -> tuple[float, float]:
    """Least squares seconds = latency + bytes x (ranks-1)/ranks / bandwidth; returns (latency_s, bytes_per_s)."""
    sent = np.array([size * (ranks - 1) / ranks for size, _ in points], dtype=float)
    seconds = np.array([value for _, value in points], dtype=float)
    design = np.stack([np.ones_like(sent), sent], axis=1)
    (latency, per_byte), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    return max(float(latency), 0.0), 1.0 / max(float(per_byte), 1e-30)


OVERHEAD_CONFIGS = ((256, 96, 4, 2), (2048, 192, 6, 1), (768, 160, 12, 3), (3072, 320, 4, 1), (1536, 64, 16, 4), (512, 384, 6, 2))
"""(tokens, hidden, experts, top-k) of the single-process layers that calibrate the host-side phases;
deliberately unlike the validation grid."""

PHASE_WORK = {
    "router": lambda tokens, hidden, experts, top_k: tokens * hidden * experts,
    "permute": lambda tokens, hidden, experts, top_k: tokens * top_k * hidden,
    "unpermute": lambda tokens, hidden, experts, top_k: tokens * top_k * hidden,
}
"""The work measure each fitted phase is linear in (elements): the router GEMM, the copied hidden vectors."""


def measure_phase_fits(model: "Any", repeats: int) -> tuple[dict[str, list[float]], float]:
    """Least-squares fits seconds = a + b x work for the host-side phases, and the fixed cost per active expert,
    measured on the executor's own single-process layer."""
    from moesim.executor.layer import MoELayer
    from moesim.routing import make_router

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in PHASE_WORK}
    per_expert: list[float] = []
    for tokens, hidden, experts, top_k in OVERHEAD_CONFIGS:
        layer = MoELayer(hidden, 2 * hidden, experts, make_router("top_k", num_experts=experts, top_k=top_k), seed=0)
        x = torch.randn(tokens, hidden)
        runs = []
        with torch.no_grad():
            for _ in range(repeats + 2):
                layer.timings = {}
                layer(x)
                runs.append(dict(layer.timings))
        phase = {name: statistics.median(run[name] for run in runs[2:]) for name in runs[-1]}
        for name, work in PHASE_WORK.items():
            samples[name].append((float(work(tokens, hidden, experts, top_k)), phase[name]))
        load = layer.last_assignment.expert_load.double().numpy()  # type: ignore[union-attr]
        compute = float(model.ffn_seconds(load, hidden, 2 * hidden, True, 4).sum())
        per_expert.append((phase["experts"] - compute) / max(1, int(np.count_nonzero(load))))
    fits = {}
    for name, points in samples.items():
        work = np.array([w for w, _ in points])
        seconds = np.array([t for _, t in points])
        (intercept, slope), *_ = np.linalg.lstsq(np.stack([np.ones_like(work), work], axis=1), seconds, rcond=None)
        fits[name] = [max(0.0, float(intercept)), max(0.0, float(slope))]
    return fits, max(0.0, statistics.median(per_expert))


EXCHANGE_CONFIGS = ((512, 96, 4, 1), (2048, 160, 6, 2), (3072, 320, 4, 1), (1536, 224, 12, 3))
"""(tokens per rank, hidden, experts, top-k) of the expert-parallel layers that calibrate the exchanges."""


def measure_layer_exchanges(ranks: int, repeats: int) -> tuple[float, float, list[dict[str, float]]]:
    """Latency and bandwidth of the token exchange as the executor's layer performs it.

    Runs the expert-parallel layer at calibration sizes and fits, over all points at once,
    dispatch = 2 x latency + bytes / bandwidth (the count exchange, then the tokens) and
    combine = latency + bytes / bandwidth, bytes being what a rank sends to the others.
    """
    from moesim.executor.launch import execute
    from moesim.scenario import scenario_from_dict

    design, seconds, points = [], [], []
    for tokens, hidden, experts, top_k in EXCHANGE_CONFIGS:
        scenario = scenario_from_dict({
            "model": {"preset": "tiny-moe", "hidden_size": hidden, "num_attention_heads": 4, "num_key_value_heads": 4,
                      "moe_intermediate_size": 2 * hidden, "num_experts": experts, "top_k": top_k},
            "cluster": {"num_nodes": 1, "gpus_per_node": ranks}, "parallelism": {"ep_size": ranks},
            "workload": {"mode": "inference", "micro_batch_size": 1, "seq_len": tokens},
        })
        report = execute(scenario, ranks, tokens, warmup=2, repeats=repeats)
        sent = tokens * top_k * hidden * 4 * (ranks - 1) / ranks
        dispatch = float(np.median(report["phases_s"]["dispatch"]))
        combine = float(np.median(report["phases_s"]["combine"]))
        design += [[2.0, sent], [1.0, sent]]
        seconds += [dispatch, combine]
        points.append({"bytes_sent": sent, "dispatch_s": dispatch, "combine_s": combine})
    (latency, per_byte), *_ = np.linalg.lstsq(np.array(design), np.array(seconds), rcond=None)
    return max(float(latency), 0.0), 1.0 / max(float(per_byte), 1e-30), points


def _compute_worker(rank: int, world: int, device: str, hidden: int, ffn: int, rows: list[int], repeats: int, quick: bool) -> dict[str, Any]:
    """Compute micro-benchmarks on one rank while the others run theirs: contention included, as in the executor."""
    from moesim.sim.compute import CostModel

    target = torch.device(f"cuda:{rank}") if device == "cuda" else torch.device("cpu")
    gemms = measure_gemms(target, hidden, ffn, rows, repeats)
    rates = [2.0 * count * hidden * ffn / seconds for count, seconds in gemms]
    memory = measure_memory(target, 16 if quick else 256, repeats)
    launch = measure_launch(target, repeats)
    peak = max(rates)
    fitted = CostModel(
        name="fit", peak_flops=peak, memory_bytes_per_s=memory, memory_efficiency=1.0, kernel_launch_s=launch,
        measured_rows=tuple(float(r) for r in rows), measured_efficiency=tuple(rate / peak for rate in rates),
    )
    fits, expert_overhead = measure_phase_fits(fitted, repeats) if target.type == "cpu" else ({}, 0.0)
    return {"rates": rates, "memory": memory, "launch": launch, "fits": fits, "expert_overhead": expert_overhead,
            "threads": torch.get_num_threads()}


def calibrate(
    device: str = "cpu", ranks: int = 2, hidden: int = 512, ffn: int = 1024, out_dir: str | Path = "validation/profiles",
    quick: bool = False,
) -> Path:
    """Measure, fit and write the profile; returns its path.

    The compute benchmarks run on `ranks` spawned processes at once, each with its share
    of the cores, so the profile describes a rank as it runs inside the executor.
    """
    from moesim.executor.launch import spawn

    repeats = 3 if quick else 9
    rows = [1, 4, 16, 64, 256, 1024] + ([] if quick else [4096, 8192])
    per_rank = spawn(_compute_worker, max(1, ranks), device, hidden, ffn, rows, repeats, quick)
    rates = list(np.mean([result["rates"] for result in per_rank], axis=0))
    peak = max(rates)
    memory = float(np.mean([result["memory"] for result in per_rank]))
    launch = float(np.mean([result["launch"] for result in per_rank]))
    fits = {
        name: [float(np.mean([result["fits"][name][i] for result in per_rank])) for i in (0, 1)]
        for name in (per_rank[0]["fits"] or {})
    }
    expert_overhead = float(np.mean([result["expert_overhead"] for result in per_rank]))
    sizes = [2**12, 2**16, 2**20] + ([] if quick else [2**22, 2**24])
    alltoall = measure_alltoall(ranks, sizes, repeats) if ranks > 1 else []
    isolated = fit_latency_bandwidth(alltoall, ranks) if alltoall else (0.0, float("inf"))
    # the simulator uses the exchange as the layer performs it (count exchange, uneven splits, ranks
    # that arrive at different times); the bare all_to_all_single fit is kept for reference
    latency, bandwidth, layer_points = measure_layer_exchanges(ranks, repeats) if ranks > 1 else (*isolated, [])
    name = device_name(torch.device(device), per_rank[0]["threads"])
    profile = {
        "device": name,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "peak_flops": peak,
        "memory_bytes_per_s": memory,
        "memory_efficiency": 1.0,
        "kernel_launch_s": launch,
        "gemm_efficiency": {"rows": rows, "efficiency": [rate / peak for rate in rates], "hidden": hidden, "ffn": ffn},
        "phase_fit": {name: {"intercept_s": a, "seconds_per_element": b} for name, (a, b) in fits.items()},
        "expert_overhead_s": expert_overhead,
        "alltoall": {
            "ranks": ranks, "backend": "nccl" if device == "cuda" else "gloo",
            "bytes_per_rank": [size for size, _ in alltoall], "seconds": [value for _, value in alltoall],
            "latency_s": latency, "bytes_per_s": bandwidth,
            "isolated_latency_s": isolated[0], "isolated_bytes_per_s": isolated[1], "layer_points": layer_points,
        },
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(profile, indent=2))
    return path
