"""Shipped device profiles: the GPU cost model fitted to measured kernel tables, with its error on every table.

`build_profile(tables, gpu)` fits, from one device's tables (`moesim.cost.kernel_tables`):
* plain bf16 GEMMs (`gemm_bf16.csv`): the tile and wave model with the library's tile
  choice and split contraction (`GroupedGemmModel.dense_seconds`);
* their backward (`ffn_backward_bf16.csv`, a SwiGLU FFN under autograd): input gradients
  are plain GEMMs of the transposed shape, weight gradients plain GEMMs contracting over
  the rows with their own efficiency and overhead, plus autograd's fixed cost per FFN;
* grouped expert GEMMs (`grouped_gemm_uniform_bf16.csv`) and their backward (the H100's
  `grouped_gemm_fp8_and_backward.csv`; a device without it takes the weight gradient's
  efficiencies from `gradients_from`, labelled derived);
* fp8 speedups by shape and rows (`gemm_fp8_vs_bf16.csv`, grouped from the H100's table);
* attention (`attention_sdpa_bf16.csv`): a fixed cost plus FLOPs at an efficiency;
* memory-bound kernels (`hbm_copy.json`): the measured share of the datasheet bandwidth.

Every fitted part carries its source and its error on the table it came from (median,
90th percentile, maximum of |predicted / measured - 1|, and the median signed error).
The tables time each kernel between host synchronisations; that overhead is not the kernel's and is taken off
inside a simulated stream (`moesim.cost.model_from_profile`): measured where the device's GEMMs were also timed back
to back in a busy stream (`in_stream_bf16.csv`: the median of table less stream over the kernels under 100 us), else
`TIMING_OVERHEAD_S`.

The grouped model is fitted in two stages: its forward parameters to the forward table alone, then the weight
gradient's to the backward samples (`fit_forward_then_gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

from moesim.cluster.hardware import GpuSpec
from moesim.cost.fp8 import Fp8Speedup
from moesim.cost.gemm_fit import (
    GroupedSample,
    dense_errors,
    fit_dense_model,
    fit_forward_then_gradient,
    minimise_log,
    relative_errors,
)
from moesim.cost.grouped import GroupedGemmModel
from moesim.cost.kernel_tables import KernelTables, causal_attention_flops, causal_query_blocks
from moesim.cost.model import causal_tile_share

SMS = 132
"""Multiprocessors of an H100 / H200 / H800 SXM."""
KERNEL_LAUNCH_S = 4e-6
"""A kernel's cost inside a busy stream (launch and tail), assumed."""
TIMING_OVERHEAD_S = 18e-6
"""What the tables' host-synchronised timing adds to a kernel, where the device has no stream timings: their
smallest GEMMs take ~25 us where CUDA events time the same kind of GEMM on the same H200 at ~7 us
(`validation/NVIDIA-H200/raw.json`). On the H100 it is measured: 17 us for plain GEMMs, 22 us for grouped ones
(medians of table less stream, `h100-2026-11-26/in_stream_bf16.csv`), 19 us over both."""
STREAM_OVERHEAD_KERNELS_S = 100e-6
"""Kernels shorter than this in a stream measure the timing overhead: in longer ones run-to-run noise swamps it."""
GATED_PASSES_BACKWARD = 7
"""Memory passes of a SwiGLU activation's backward per row and inner unit (see `CostModel.activation_seconds`)."""


def error_summary(errors: Sequence[float], table: str) -> dict[str, Any]:
    """|error| median, 90th percentile and maximum, the median signed error, the count, and the table."""
    values = np.asarray(errors, dtype=float)
    return {
        "table": table,
        "count": int(values.size),
        "median": float(np.median(np.abs(values))),
        "p90": float(np.percentile(np.abs(values), 90)),
        "max": float(np.abs(values).max()),
        "signed_median": float(np.median(values)),
    }


def ffn_backward_seconds(
    dense: GroupedGemmModel, rows: Any, hidden: int, inner: int, bandwidth: float, fixed_s: float
) -> Any:
    """A SwiGLU FFN's backward from the plain-GEMM model: input gradients, weight gradients, activation, autograd."""
    return (
        dense.dense_seconds(rows, hidden, inner)
        + dense.dense_weight_grad_seconds(rows, inner, hidden)
        + dense.dense_seconds(rows, 2 * inner, hidden)
        + dense.dense_weight_grad_seconds(rows, hidden, 2 * inner)
        + np.asarray(rows, dtype=float) * GATED_PASSES_BACKWARD * inner * 2 / bandwidth
        + fixed_s
    )


def fit_dense_backward(
    dense: GroupedGemmModel, samples: Sequence[tuple[int, int, int, float, float]], bandwidth: float
) -> tuple[GroupedGemmModel, float, np.ndarray]:
    """The weight gradients' efficiency and overhead and autograd's fixed cost per FFN, fitted to measured backwards."""
    rows = np.array([s[0] for s in samples], dtype=float)
    measured = np.array([s[4] for s in samples])

    def model_of(params: np.ndarray) -> tuple[GroupedGemmModel, float]:
        share, overhead, fixed = np.exp(params)
        return replace(
            dense,
            weight_grad_compute_efficiency=min(share, 1.0) * dense.compute_efficiency,
            weight_grad_memory_efficiency=dense.memory_efficiency,
            weight_grad_overhead_s=overhead,
        ), fixed

    def predict(params: np.ndarray) -> np.ndarray:
        model, fixed = model_of(params)
        return np.array(
            [
                float(ffn_backward_seconds(model, r, hidden, inner, bandwidth, fixed))
                for r, (_, hidden, inner, _, _) in zip(rows, samples)
            ]
        )

    params = minimise_log(lambda p: float(np.mean(np.log(predict(p) / measured) ** 2)), (0.8, 20e-6, 50e-6))
    model, fixed = model_of(params)
    return model, fixed, predict(params) / measured - 1.0


def fit_attention(samples: Sequence[tuple[int, int, int, int, float]], peak: float) -> tuple[float, float, np.ndarray]:
    """(efficiency, fixed seconds, errors) of host-timed causal attention: seconds = fixed + FLOPs / (peak x
    efficiency), the diagonal's tiles counted whole (`causal_tile_share`), least squares."""
    flops = np.array([_tile_flops(*s[:4]) for s in samples])
    seconds = np.array([s[4] for s in samples])
    slope, fixed = np.polyfit(flops, seconds, 1)
    fixed = max(float(fixed), 0.0)
    efficiency = float(1.0 / (slope * peak))
    return efficiency, fixed, (fixed + flops / (peak * efficiency)) / seconds - 1.0


def _tile_flops(batch: int, heads: int, sequence: int, head_dim: int) -> float:
    """A causal attention's FLOPs as its kernel runs them: the full product's share in whole tiles."""
    return causal_attention_flops(batch, heads, sequence, head_dim) * 2 * causal_tile_share(sequence)


def fit_attention_in_stream(
    samples: Sequence[tuple[int, int, int, int, float]], peak: float
) -> tuple[float, float, float, np.ndarray]:
    """(efficiency, fixed seconds, seconds a query block, errors) of causal attention timed in a busy stream:
    seconds = fixed + FLOPs in whole tiles / (peak x efficiency) + query blocks x block cost / SMs."""
    flops = np.array([_tile_flops(*s[:4]) for s in samples])
    blocks = np.array([causal_query_blocks(s[0], s[1], s[2]) for s in samples])
    seconds = np.array([s[4] for s in samples])

    def predict(params: np.ndarray) -> np.ndarray:
        efficiency, fixed, block = np.exp(params)
        return fixed + flops / (peak * min(efficiency, 1.0)) + blocks * block / SMS

    params = minimise_log(lambda p: float(np.mean(np.log(predict(p) / seconds) ** 2)), (0.6, 10e-6, 1e-6))
    efficiency, fixed, block = np.exp(params)
    return min(float(efficiency), 1.0), float(fixed), float(block), predict(params) / seconds - 1.0


def _attention_samples(tables: KernelTables, overhead: float) -> list[tuple[int, int, int, int, float]]:
    """Causal prefills timed in a stream (`attention_in_stream.csv`) and the table's, less the timing overhead."""
    stream = [
        (sequences, heads, context, 128, seconds)
        for kind, sequences, heads, _, _, context, seconds in tables.attention_in_stream
        if kind == "prefill"
    ]
    return stream + [(b, h, s, d, seconds - overhead) for b, h, s, d, seconds in tables.attention]


def measured_timing_overhead(tables: KernelTables) -> Optional[float]:
    """What host-synchronised timing adds to a kernel on this device, measured: the median of table less stream
    seconds over the kernels under `STREAM_OVERHEAD_KERNELS_S` in a stream; None without stream timings."""
    gaps = [table - stream for *_, table, stream in tables.in_stream if stream < STREAM_OVERHEAD_KERNELS_S]
    return float(np.median(gaps)) if gaps else None


def _grouped_samples(tables: KernelTables) -> tuple[list[GroupedSample], list[GroupedSample]]:
    forward: list[GroupedSample] = [
        ("forward", [rows] * groups, inner, cols, seconds) for groups, rows, inner, cols, seconds in tables.grouped
    ]
    backward: list[GroupedSample] = [
        ("backward", [rows] * groups, inner, cols, bf16 * ratio)
        for groups, rows, inner, cols, bf16, _, ratio in tables.grouped_fp8
    ]
    return forward, backward


@dataclass(frozen=True)
class FittedParts:
    """The fitted kernel models a held-out table is predicted with."""

    dense: GroupedGemmModel
    ffn_fixed_s: float
    grouped: GroupedGemmModel
    attention: Optional[tuple[float, float, float]]  # (efficiency, fixed seconds, seconds a query block) in a stream
    bandwidth: float


def held_out_errors(fitted: FittedParts, fp8: Optional[Fp8Speedup], held: KernelTables, peak: float) -> dict[str, Any]:
    """Each part's `predicted / measured - 1` summary on the rows the fit never saw (parts with such rows only):
    plain GEMMs, the FFN backward, grouped GEMMs, fp8 speedups and causal prefill attention in a stream."""
    errors: dict[str, Any] = {}
    if held.gemm:
        errors["dense_gemm"] = error_summary(dense_errors(fitted.dense, held.gemm), "gemm_bf16.csv")
    if held.ffn_backward:
        backward = [
            float(ffn_backward_seconds(fitted.dense, r, hidden, inner, fitted.bandwidth, fitted.ffn_fixed_s)) / seconds
            - 1.0
            for r, hidden, inner, _, seconds in held.ffn_backward
        ]
        errors["dense_backward"] = error_summary(backward, "ffn_backward_bf16.csv")
    forward, _ = _grouped_samples(held)
    if forward:
        errors["grouped_gemm"] = error_summary(
            relative_errors(fitted.grouped, forward), "grouped_gemm_uniform_bf16.csv"
        )
    if fp8 is not None and held.fp8_speedup:
        speedups = [fp8.speedup(rows, inner, cols) / value - 1.0 for rows, inner, cols, value in held.fp8_speedup]
        errors["fp8_dense"] = error_summary(speedups, "gemm_fp8_vs_bf16.csv")
    prompts = [row for row in held.attention_in_stream if row[0] == "prefill"]
    if fitted.attention is not None and prompts:
        efficiency, fixed, block = fitted.attention
        attention = [
            (
                fixed
                + _tile_flops(sequences, heads, context, 128) / (peak * efficiency)
                + causal_query_blocks(sequences, heads, context) * block / SMS
            )
            / seconds
            - 1.0
            for _, sequences, heads, _, _, context, seconds in prompts
        ]
        errors["attention"] = error_summary(attention, "attention_in_stream.csv")
    return errors


def build_profile(
    tables: KernelTables,
    gpu: GpuSpec,
    gradients_from: Optional[KernelTables] = None,
    phase_fit: Optional[dict[str, Any]] = None,
    held_out: Optional[KernelTables] = None,
) -> dict[str, Any]:
    """The profile of `gpu` fitted to `tables` (see the module docstring); `phase_fit` is carried as given. With
    `held_out` (rows kept from the fit: a held-out draw's), each part's error there too (`held_out_errors`)."""
    peak, bandwidth = gpu.peak_bf16_flops, tables.copy_bytes_per_s
    label = f"measured: {tables.name}"
    sources: dict[str, str] = {}
    errors: dict[str, Any] = {}

    overhead = measured_timing_overhead(tables)
    if overhead is not None:
        sources["timing_overhead"] = (
            f"{label}/in_stream_bf16.csv ({overhead * 1e6:.1f} us: table less stream, median of "
            f"{sum(1 for *_, stream in tables.in_stream if stream < STREAM_OVERHEAD_KERNELS_S)} kernels)"
        )
    dense = fit_dense_model(tables.gemm, peak, bandwidth, SMS)
    errors["dense_gemm"] = error_summary(dense_errors(dense, tables.gemm), "gemm_bf16.csv")
    sources["dense_gemm"] = f"{label}/gemm_bf16.csv"
    dense, ffn_fixed, backward_errors = fit_dense_backward(dense, tables.ffn_backward, bandwidth)
    errors["dense_backward"] = error_summary(backward_errors, "ffn_backward_bf16.csv")
    sources["dense_backward"] = f"{label}/ffn_backward_bf16.csv"

    forward, backward = _grouped_samples(tables)
    grouped = fit_forward_then_gradient(forward, backward, peak, bandwidth, SMS)
    errors["grouped_gemm"] = error_summary(relative_errors(grouped, forward), "grouped_gemm_uniform_bf16.csv")
    sources["grouped_gemm"] = f"{label}/grouped_gemm_uniform_bf16.csv"
    if backward:
        errors["grouped_backward"] = error_summary(
            relative_errors(grouped, backward), "grouped_gemm_fp8_and_backward.csv"
        )
        sources["grouped_backward"] = f"{label}/grouped_gemm_fp8_and_backward.csv"
    elif gradients_from is not None and gradients_from.grouped_fp8:
        donor_forward, donor_backward = _grouped_samples(gradients_from)
        donor = fit_forward_then_gradient(donor_forward, donor_backward, peak, gradients_from.copy_bytes_per_s, SMS)
        grouped = replace(
            grouped,
            weight_grad_compute_efficiency=donor.weight_grad_compute_efficiency,
            weight_grad_memory_efficiency=donor.weight_grad_memory_efficiency,
            weight_grad_overhead_s=donor.weight_grad_overhead_s,
        )
        errors["grouped_backward"] = error_summary(
            relative_errors(donor, donor_backward), f"{gradients_from.name}/grouped_gemm_fp8_and_backward.csv"
        )
        sources["grouped_backward"] = (
            f"derived from {gradients_from.name}/grouped_gemm_fp8_and_backward.csv "
            "(the weight gradient's efficiencies; error: the fit there)"
        )

    profile: dict[str, Any] = {
        "device": gpu.name,
        "format": 2,
        "measured_at": tables.name.split("-", 1)[-1],
        "tables": tables.name,
        "peak_flops": peak,
        "peak_fp8_flops": (gpu.peak_fp8_tflops or 0.0) * 1e12,
        "memory_bytes_per_s": gpu.hbm_tb_per_s * 1e12,
        "memory_efficiency": bandwidth / (gpu.hbm_tb_per_s * 1e12),
        "memory_gb": gpu.hbm_gb,
        "kernel_launch_s": KERNEL_LAUNCH_S,
        "timing_overhead_s": TIMING_OVERHEAD_S if overhead is None else overhead,
        "backward_gemm_factor": 2.0,
        "dense_gemm": dense.as_dict(),
        "grouped_gemm": grouped.as_dict(),
        "ffn_backward_overhead_s": ffn_fixed,
    }
    sources["memory"] = f"{label}/hbm_copy.json ({bandwidth / 1e12:.2f} TB/s copy)"
    if tables.attention_in_stream:
        timing = profile["timing_overhead_s"]
        samples = _attention_samples(tables, timing)
        efficiency, fixed, block, attention_errors = fit_attention_in_stream(samples, peak)
        attention_fit = (efficiency, fixed, block)
        # a profile's overheads are as host-synchronised tables time them: the cost model takes the timing off
        profile.update(attention_efficiency=efficiency, attention_overhead_s=fixed + timing, attention_block_s=block)
        errors["attention"] = error_summary(attention_errors, "attention_in_stream.csv + attention_sdpa_bf16.csv")
        sources["attention"] = (
            f"{label}/attention_in_stream.csv (prompts of 512-8,192 tokens in a busy stream) and "
            "attention_sdpa_bf16.csv"
        )
    elif tables.attention:
        efficiency, fixed, attention_errors = fit_attention(tables.attention, peak)
        profile.update(attention_efficiency=efficiency, attention_overhead_s=fixed)
        errors["attention"] = error_summary(attention_errors, "attention_sdpa_bf16.csv")
        sources["attention"] = f"{label}/attention_sdpa_bf16.csv"
    if tables.fp8_speedup:
        speedup = Fp8Speedup.from_list([(inner, cols, rows, value) for rows, inner, cols, value in tables.fp8_speedup])
        profile["fp8_dense_speedup"] = speedup.as_list()
        errors["fp8_dense"] = error_summary(speedup.errors(), "gemm_fp8_vs_bf16.csv")
        errors["fp8_dense_leave_one_out"] = error_summary(speedup.leave_one_out_errors(), "gemm_fp8_vs_bf16.csv")
        sources["fp8_dense"] = f"{label}/gemm_fp8_vs_bf16.csv"
    fp8_donor = tables if tables.grouped_fp8 else gradients_from
    if fp8_donor is not None and fp8_donor.grouped_fp8:
        grouped_speedup = Fp8Speedup.from_list(
            [(inner, cols, rows, bf16 / fp8) for _, rows, inner, cols, bf16, fp8, _ in fp8_donor.grouped_fp8]
        )
        profile["fp8_grouped_speedup"] = grouped_speedup.as_list()
        table = f"{fp8_donor.name}/grouped_gemm_fp8_and_backward.csv"
        errors["fp8_grouped"] = error_summary(grouped_speedup.errors(), table)
        errors["fp8_grouped_leave_one_out"] = error_summary(grouped_speedup.leave_one_out_errors(), table)
        sources["fp8_grouped"] = (
            f"{label}/grouped_gemm_fp8_and_backward.csv"
            if fp8_donor is tables
            else f"derived from {fp8_donor.name}/grouped_gemm_fp8_and_backward.csv"
        )
    if phase_fit:
        profile["phase_fit"] = phase_fit
    if held_out is not None:
        fitted = FittedParts(
            dense, ffn_fixed, grouped, attention_fit if tables.attention_in_stream else None, bandwidth
        )
        fitted_fp8 = Fp8Speedup.from_list(profile["fp8_dense_speedup"]) if "fp8_dense_speedup" in profile else None
        profile["held_out_errors"] = held_out_errors(fitted, fitted_fp8, held_out, peak)
    profile["sources"] = sources
    profile["errors"] = errors
    profile["source"] = f"measured kernel tables {tables.name}"
    return profile
