"""Calibration: measure this device and fit the simulator's `CostModel` profile to it.

Micro-benchmarks, every one timed as the median of repetitions spread over rounds
(`moesim.validation.timing`), on `ranks` processes at once so that each rank is measured
as it runs inside the executor, sharing the machine with the others:
* GEMMs `[rows x inner] @ [inner x cols]` over rows 1..8192 for several shapes: at each
  row count the median rate over the shapes; the best is the device's `peak_flops` and
  each row count's share of it the efficiency curve the simulator interpolates;
* copies of a few sizes for memory bandwidth (activations and gathers are copies);
* a tiny kernel for the per-kernel launch overhead;
* a SwiGLU FFN forward and forward + backward under autograd: the backward/forward ratio;
* `all_to_all_single` against bytes (gloo on CPU, NCCL on GPU), fitted to latency +
  bytes / bandwidth;
* the expert-parallel executor's own layer at sizes unlike the validation grid, for every
  calibrated routing rule: each phase as it runs inside the layer (caches disturbed by the
  phases around it, ranks arriving at different times) fitted to a linear model over its
  `HOST_PHASE_FEATURES` (the experts phase over the FFN time the GEMM curve predicts), and
  the token exchange (count exchange, then uneven splits) to latency + bytes / bandwidth.

The result is a JSON profile under `validation/profiles/`, named by the device, that
`simulation.cost_profile` loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from moesim.cost.model import CostModel
from moesim.cost.phase_features import HOST_PHASE_FEATURES, host_phase_features, router_fit_key
from moesim.executor.launch import measure_layers, spawn
from moesim.scenario import scenario_from_dict
from moesim.validation.microbench import (  # noqa: F401  (re-exported: callers name them from here)
    BACKWARD_SIZES,
    GEMM_SHAPES,
    device_name,
    fit_latency_bandwidth,
    measure_alltoall,
    measure_backward_factor,
    measure_gemm_rates,
    measure_launch,
    measure_memory,
)
from moesim.validation.timing import nonnegative_relative_fit

GEMM_ROWS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_GEMM_ROWS = (1, 4, 16, 64, 256, 1024)

LAYER_CONFIGS = (
    (384, 96, 12, 1),
    (768, 192, 12, 2),
    (1536, 160, 12, 3),
    (3072, 128, 16, 1),
    (6144, 96, 12, 2),
    (2048, 320, 12, 1),
    (512, 448, 16, 2),
    (5120, 64, 12, 3),
    (2560, 224, 12, 2),
    (1280, 384, 20, 1),
    (3072, 384, 12, 2),
)
"""(tokens per rank, hidden, experts, top-k) of the expert-parallel layers that calibrate the phases;
deliberately unlike the validation grid (tokens 1024/4096, hidden 256/512, experts 4/8, top-k 1/2).
Expert counts divide by 2 and 4 ranks."""

CalibrationLayer = tuple[tuple[int, int, int, int], str, Optional[float]]
"""(tokens per rank, hidden, experts, top-k), routing rule, capacity factor."""

ROUTER_VARIANTS: tuple[tuple[str, Optional[float], int], ...] = (
    ("top_k", None, 11),
    ("top_k", 1.5, 10),
    ("expert_choice", 1.5, 10),
    ("noisy_top_k", None, 6),
    ("sinkhorn", None, 6),
    ("bias_balanced", None, 6),
    ("bias_balanced", 1.5, 6),
)
"""(rule, capacity factor, how many of LAYER_CONFIGS) whose layers the calibration runs; the permutation,
expert and exchange models use every layer. Rules not here fall back to the roofline router."""


def calibration_layers(ranks: int, quick: bool) -> list[CalibrationLayer]:
    """(layer config, rule, capacity factor) of every layer the calibration runs."""
    configs = LAYER_CONFIGS[:3] if quick else LAYER_CONFIGS
    variants = ROUTER_VARIANTS[:3] if quick else ROUTER_VARIANTS
    return [
        (config, rule, factor)
        for rule, factor, count in variants
        for config in configs[:count]
        if config[2] % ranks == 0
    ]


def calibration_scenarios(ranks: int, quick: bool) -> tuple[list[CalibrationLayer], list[Any]]:
    """The calibration layers and a one-layer inference scenario for each (what `measure_layers` runs)."""
    layers = calibration_layers(ranks, quick)
    scenarios = [
        scenario_from_dict(
            {
                "name": f"calibration {rule} cf {factor} T={tokens} h={hidden} E={experts} k={top_k}",
                "model": {
                    "preset": "tiny-moe",
                    "hidden_size": hidden,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 4,
                    "moe_intermediate_size": 2 * hidden,
                    "num_experts": experts,
                    "top_k": top_k,
                },
                "cluster": {"num_nodes": 1, "gpus_per_node": ranks},
                "parallelism": {"ep_size": ranks},
                "workload": {
                    "mode": "inference",
                    "micro_batch_size": 1,
                    "seq_len": tokens,
                    "precision": {"activations": "fp32", "weights": "fp32"},
                },  # the CPU's precision, as the grid's
                "routing": {"strategy": rule, "capacity_factor": factor},
            }
        )
        for (tokens, hidden, experts, top_k), rule, factor in layers
    ]
    return layers, scenarios


def experts_features(
    model: CostModel, tokens: int, hidden: int, experts: int, top_k: int, load: Sequence[int]
) -> tuple[float, ...]:
    """Features of an experts phase that ran the executor's SwiGLU experts (ffn = 2 x hidden, fp32) on these loads."""
    rows = np.asarray(load, dtype=float)
    arithmetic = float(model.ffn_seconds(rows, hidden, 2 * hidden, True, 4).sum())
    return host_phase_features(
        "experts",
        tokens,
        hidden,
        experts,
        top_k,
        active_experts=int(np.count_nonzero(rows)),
        rows=float(rows.sum()),
        ffn_seconds=arithmetic,
    )


def fit_layer_phases(
    model: CostModel, layers: Sequence[CalibrationLayer], measured: Sequence[dict[str, Any]], ranks: int
) -> tuple[dict[str, dict[str, Any]], tuple[float, float], list[dict[str, float]]]:
    """Fit every phase as it ran inside the expert-parallel calibration layers.

    Returns the `phase_fit` section (non-negative relative least squares of each phase
    key over its features), the exchange's (latency, bandwidth) fitted as dispatch =
    2 x latency + bytes / bandwidth (the count exchange, then the tokens) and combine =
    latency + bytes / bandwidth, and the exchange points.
    """
    samples: dict[str, list[tuple[tuple[float, ...], float]]] = {}
    exchange_design, exchange_seconds, points = [], [], []
    for ((tokens, hidden, experts, top_k), rule, factor), report in zip(layers, measured):
        phases = report["phases_s"]
        samples.setdefault(router_fit_key(rule, factor), []).append(
            (host_phase_features("router", tokens, hidden, experts, top_k), float(np.mean(phases["router"])))
        )
        served = float(np.mean(report["served_slots"]))
        for phase in ("permute", "unpermute"):
            features = host_phase_features(phase, tokens, hidden, experts, top_k, served)
            samples.setdefault(phase, []).append((features, float(np.mean(phases[phase]))))
        for rank, load in enumerate(report["local_load"]):
            features = experts_features(model, tokens, hidden, experts, top_k, load)
            samples.setdefault("experts", []).append((features, phases["experts"][rank]))
        sent = tokens * top_k * hidden * 4 * (ranks - 1) / ranks
        dispatch, combine = float(np.mean(phases["dispatch"])), float(np.mean(phases["combine"]))
        exchange_design += [[2.0, sent], [1.0, sent]]
        exchange_seconds += [dispatch, combine]
        points.append({"bytes_sent": sent, "dispatch_s": dispatch, "combine_s": combine})
    fits = {}
    for key, pairs in sorted(samples.items()):
        coefficients = nonnegative_relative_fit([f for f, _ in pairs], [t for _, t in pairs])
        fits[key] = {"features": list(HOST_PHASE_FEATURES[key.split(":")[0]]), "coefficients": coefficients}
    latency, per_byte = nonnegative_relative_fit(exchange_design, exchange_seconds)
    return fits, (latency, 1.0 / max(per_byte, 1e-30)), points


def gemm_shapes(quick: bool) -> tuple[tuple[int, int], ...]:
    return GEMM_SHAPES[:3] if quick else GEMM_SHAPES


def _compute_worker(
    rank: int, world: int, device: str, rows: list[int], rounds: int, repeats: int, quick: bool
) -> dict[str, Any]:
    """Compute micro-benchmarks on one rank while the others run theirs: contention included, as in the executor."""
    target = torch.device(f"cuda:{rank}") if device == "cuda" else torch.device("cpu")
    rates = measure_gemm_rates(target, rows, rounds, repeats, gemm_shapes(quick))
    memory = measure_memory(target, (2, 8) if quick else (2, 8, 32), rounds, repeats)
    launch = measure_launch(target, repeats)
    backward = measure_backward_factor(target, ((64, 48), (256, 96)) if quick else BACKWARD_SIZES, rounds, repeats)
    return {
        "rates": rates,
        "memory": memory,
        "launch": launch,
        "backward": backward,
        "threads": torch.get_num_threads(),
    }


def measure_device(
    device: str, ranks: int, quick: bool, on_step: Optional[Callable[[str], None]] = None
) -> dict[str, Any]:
    """The micro-benchmarks: GEMM curve, memory, launch (every rank at once) and all_to_all_single against bytes."""
    step = on_step or (lambda _: None)
    rounds, repeats = calibration_rounds(quick)
    rows = list(QUICK_GEMM_ROWS if quick else GEMM_ROWS)
    step("GEMMs, memory and launches on every rank at once")
    per_rank = spawn(_compute_worker, max(1, ranks), device, rows, rounds, repeats, quick)
    rates = list(np.mean([result["rates"] for result in per_rank], axis=0))
    step("all-to-all against bytes")
    sizes = [2**12, 2**16, 2**20] + ([] if quick else [2**22, 2**24])
    alltoall = measure_alltoall(ranks, sizes, rounds, repeats) if ranks > 1 else []
    return {
        "device": device,
        "ranks": ranks,
        "quick": quick,
        "threads": per_rank[0]["threads"],
        "rows": rows,
        "rates": rates,
        "memory": float(np.mean([result["memory"] for result in per_rank])),
        "launch": float(np.mean([result["launch"] for result in per_rank])),
        "alltoall": alltoall,
        "backward_gemm_factor": float(np.mean([result["backward"] for result in per_rank])),
    }


def calibration_rounds(quick: bool) -> tuple[int, int]:
    """(rounds, repeats per round) of the calibration's benchmarks."""
    return (2, 2) if quick else (5, 3)


def gemm_model(measured: dict[str, Any]) -> CostModel:
    """The compute model the micro-benchmarks give (before any in-layer fit)."""
    peak = max(measured["rates"])
    return CostModel(
        name="fit",
        peak_flops=peak,
        memory_bytes_per_s=measured["memory"],
        memory_efficiency=1.0,
        kernel_launch_s=measured["launch"],
        measured_rows=tuple(float(r) for r in measured["rows"]),
        measured_efficiency=tuple(rate / peak for rate in measured["rates"]),
    )


NO_EXCHANGE_BYTES_PER_S = 1e12
"""Stand-in bandwidth of a profile measured on one rank, which never exchanges tokens."""


def write_profile(
    measured: dict[str, Any],
    layers: Sequence[CalibrationLayer],
    layer_reports: Sequence[dict[str, Any]],
    out_dir: str | Path,
    fits: Optional[dict[str, Any]] = None,
    suffix: str = "",
) -> Path:
    """Fit the calibration layers' phases on top of the micro-benchmarks and write the profile JSON.

    `fits` adds phase models fitted elsewhere (the single-device experts validation);
    the file is `<device name><suffix>.json` in `out_dir`.
    """
    ranks, alltoall = measured["ranks"], measured["alltoall"]
    isolated = fit_latency_bandwidth(alltoall, ranks) if alltoall else (0.0, NO_EXCHANGE_BYTES_PER_S)
    fits = dict(fits or {})
    (latency, bandwidth), layer_points = isolated, []
    if layers:
        # the simulator uses the exchange as the layer performs it (count exchange, uneven splits, ranks
        # that arrive at different times); the bare all_to_all_single fit is kept for reference
        layer_fits, (latency, bandwidth), layer_points = fit_layer_phases(
            gemm_model(measured), layers, layer_reports, ranks
        )
        fits.update(layer_fits)
    name = device_name(torch.device(measured["device"]), ranks, measured["threads"])
    profile = {
        "device": name,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "peak_flops": max(measured["rates"]),
        "memory_bytes_per_s": measured["memory"],
        "memory_efficiency": 1.0,
        "kernel_launch_s": measured["launch"],
        "backward_gemm_factor": measured["backward_gemm_factor"],
        "gemm_efficiency": {
            "rows": measured["rows"],
            "efficiency": [rate / max(measured["rates"]) for rate in measured["rates"]],
            "shapes": [list(s) for s in gemm_shapes(measured["quick"])],
        },
        "phase_fit": fits,
        "alltoall": {
            "ranks": ranks,
            "backend": ("nccl" if measured["device"] == "cuda" else "gloo") if alltoall else "none",
            "bytes_per_rank": [size for size, _ in alltoall],
            "seconds": [value for _, value in alltoall],
            "latency_s": latency,
            "bytes_per_s": bandwidth,
            "isolated_latency_s": isolated[0],
            "isolated_bytes_per_s": isolated[1],
            "layer_points": layer_points,
        },
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}.json"
    path.write_text(json.dumps(profile, indent=2))
    return path


def calibrate(
    device: str = "cpu",
    ranks: int = 2,
    out_dir: str | Path = "validation/profiles",
    quick: bool = False,
    on_step: Optional[Callable[[str], None]] = None,
) -> Path:
    """Measure, fit and write the profile; returns its path.

    The compute benchmarks run on `ranks` spawned processes at once, each with its share
    of the cores, so the profile describes a rank as it runs inside the executor.
    (`moesim validate` runs the same calibration with its layers interleaved among the
    validation layers instead, so that both see the machine at the same times.)
    """
    measured = measure_device(device, ranks, quick, on_step)
    layers, scenarios = calibration_scenarios(ranks, quick) if ranks > 1 else ([], [])
    reports = []
    if layers:
        if on_step:
            on_step("router, permutation, experts and exchanges inside the expert-parallel layer")
        rounds, repeats = calibration_rounds(quick)
        reports = measure_layers(scenarios, ranks, rounds=rounds, repeats=repeats)
    return write_profile(measured, layers, reports, out_dir)
