"""Where a `CostModel` comes from: a measured device profile (JSON, parsed once per content), or a datasheet GPU
with assumed efficiencies and the H200 executor's measured router and permutation costs at its bandwidth."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from moesim.cluster.hardware import gpu_preset, gpu_preset_names
from moesim.cost.fp8 import Fp8Speedup
from moesim.cost.fp8_gemms import shipped_fp8_gemms
from moesim.cost.grouped import GroupedGemmModel
from moesim.cost.model import (
    DEFAULT_ATTENTION_EFFICIENCY,
    DEFAULT_BACKWARD_GEMM_FACTOR,
    DEFAULT_LAUNCH_SECONDS,
    DEFAULT_MEMORY_EFFICIENCY,
    KERNEL_FIELDS,
    CostModel,
)
from moesim.cost.phase_features import phase_fit_entry
from moesim.cost.shipped_profiles import shipped_profile, shipped_profile_path
from moesim.cost.shipping import scaled_phase_fit
from moesim.errors import MoesimError


def model_for_gpu(gpu: Any) -> CostModel:
    """The model of a `GpuSpec`: its shipped profile when it is a preset that has one, its compute and memory
    unchanged (measured or derived), else datasheet peaks with assumed efficiencies, and the H200's measured
    router and permutation kernels at this GPU's bandwidth."""
    path = shipped_profile_path(gpu.name)
    if path is not None and gpu.name in gpu_preset_names():
        preset = gpu_preset(gpu.name)
        if all(getattr(gpu, name) == getattr(preset, name) for name in KERNEL_FIELDS):
            return with_measured_fp8_gemms(model_from_profile(path), gpu.name)
    bandwidth = gpu.hbm_tb_per_s * 1e12
    phases = _assumed_moe_kernels(bandwidth * DEFAULT_MEMORY_EFFICIENCY)
    dense, grouped, backward = _borrowed_gemms(gpu)
    sources = [
        ("GEMMs, attention, memory", "datasheet peak x assumed efficiency (no measurement of this GPU)"),
        *(
            (
                part,
                f"{GEMM_DONOR}'s measured {kind} fits at this GPU's datasheet peak, bandwidth and SMs (not checked "
                "on this GPU)",
            )
            for part, kind in (("dense_gemm", "GEMM"), ("grouped_gemm", "grouped-GEMM"))
            if dense is not None
        ),
    ]
    if phases:
        sources.append(
            (
                "moe_kernels",
                "assumed: the H200 executor's per-element device costs at this GPU's datasheet bandwidth, "
                "host launches hidden",
            )
        )
    return CostModel(
        name=gpu.name,
        peak_flops=gpu.peak_bf16_tflops * 1e12,
        memory_bytes_per_s=bandwidth,
        peak_fp8_flops=(gpu.peak_fp8_tflops * 1e12) if gpu.peak_fp8_tflops else None,
        phase_fit=phases,
        dense=dense,
        grouped=grouped,
        backward_gemm_factor=backward,
        sources=tuple(sources),
    )


GEMM_DONOR = "H100-SXM"
"""The measured GPU whose GEMM fits a GPU without measurements borrows (`_borrowed_gemms`)."""


def _borrowed_gemms(gpu: Any) -> tuple[Optional[GroupedGemmModel], Optional[GroupedGemmModel], float]:
    """A GPU without measurements gets the donor's measured tile-and-wave GEMM fits at its own datasheet peak,
    memory bandwidth (the donor's measured share of its datasheet rate) and SM count: GEMM time then follows each
    shape's tiles, waves and fixed costs as the donor's kernels do, not one efficiency curve over the rows alone
    (which made small GEMMs faster on an A100 than on the measured H100). Returns (dense, grouped, backward GEMM
    factor); no fits where the donor has none."""
    donor_path = shipped_profile_path(GEMM_DONOR)
    if donor_path is None:
        return None, None, DEFAULT_BACKWARD_GEMM_FACTOR
    donor = model_from_profile(donor_path)
    preset = gpu_preset(GEMM_DONOR)

    def borrowed(model: Optional[GroupedGemmModel]) -> Optional[GroupedGemmModel]:
        if model is None:
            return None
        return replace(
            model,
            peak_flops=gpu.peak_bf16_tflops * 1e12,
            bandwidth_bytes_per_s=model.bandwidth_bytes_per_s * gpu.hbm_tb_per_s / preset.hbm_tb_per_s,
            sms=gpu.sms or model.sms,
        )

    return borrowed(donor.dense), borrowed(donor.grouped), donor.backward_gemm_factor


def with_measured_fp8_gemms(model: CostModel, gpu_name: str) -> CostModel:
    """The model with its plain FP8 GEMMs read from the measured table where the preset has one
    (`moesim.cost.fp8_gemms`), labelled as such; unchanged otherwise."""
    table = shipped_fp8_gemms(gpu_name)
    if table is None or not model.peak_fp8_flops:
        return model
    sources = tuple((part, label) for part, label in model.sources if part != "fp8_dense")
    return replace(model, fp8_gemms=table, sources=sources + (("fp8_dense", table.label),))


def model_from_profile(path: str | Path) -> CostModel:
    """A measured profile (JSON): peak_flops, memory_bytes_per_s, gemm_efficiency {rows, efficiency}, ...

    Parsed once per content (a planner simulates hundreds of layouts on one profile)."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise MoesimError(f"{path}: not a usable cost profile ({type(error).__name__}: {error})") from None
    return _profile_model(str(path), content)


def _parse_profile(path: Path, content: bytes) -> CostModel:
    try:
        data = json.loads(content)
        curve = data.get("gemm_efficiency", {})
        rows, efficiency = curve.get("rows"), curve.get("efficiency")
        launch = float(data.get("kernel_launch_s", DEFAULT_LAUNCH_SECONDS))
        timing = float(data.get("timing_overhead_s", 0.0))  # host synchronisation inside measured kernel times
        model = CostModel(
            name=str(data["device"]),
            peak_flops=float(data["peak_flops"]),
            memory_bytes_per_s=float(data["memory_bytes_per_s"]),
            memory_efficiency=float(data.get("memory_efficiency", DEFAULT_MEMORY_EFFICIENCY)),
            attention_efficiency=float(data.get("attention_efficiency", DEFAULT_ATTENTION_EFFICIENCY)),
            kernel_launch_s=launch,
            measured_rows=tuple(float(x) for x in rows) if rows else None,
            measured_efficiency=tuple(float(x) for x in efficiency) if efficiency else None,
            phase_fit=tuple(sorted(phase_fit_entry(key, value) for key, value in data.get("phase_fit", {}).items())),
            backward_gemm_factor=float(data.get("backward_gemm_factor", DEFAULT_BACKWARD_GEMM_FACTOR)),
            grouped=_in_stream(data.get("grouped_gemm"), timing, launch),
            dense=_in_stream(data.get("dense_gemm"), timing, launch),
            source=f"{data['source']} (profile {path.name})" if data.get("source") else f"measured profile {path.name}",
            peak_fp8_flops=float(data["peak_fp8_flops"]) if data.get("peak_fp8_flops") else None,
            fp8_dense=Fp8Speedup.from_list(data["fp8_dense_speedup"]) if data.get("fp8_dense_speedup") else None,
            fp8_grouped=Fp8Speedup.from_list(data["fp8_grouped_speedup"]) if data.get("fp8_grouped_speedup") else None,
            attention_overhead_s=max(launch, float(data.get("attention_overhead_s", launch)) - timing),
            attention_block_s=float(data.get("attention_block_s", 0.0)),
            ffn_backward_overhead_s=max(0.0, float(data.get("ffn_backward_overhead_s", 0.0)) - timing),
            sources=_labelled_sources(data, path),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MoesimError(f"{path}: not a usable cost profile ({type(error).__name__}: {error})") from None
    if model.measured_rows is not None and (
        model.measured_efficiency is None or len(model.measured_rows) != len(model.measured_efficiency)
    ):
        raise MoesimError(f"{path}: gemm_efficiency needs 'rows' and 'efficiency' lists of equal length")
    return model


def _in_stream(data: Optional[dict[str, Any]], timing: float, launch: float) -> Optional[GroupedGemmModel]:
    """A measured kernel model with the measurement's host synchronisation taken off its overheads."""
    if not data:
        return None
    model = GroupedGemmModel.from_dict(data)
    if timing <= 0:
        return model
    return replace(
        model,
        overhead_s=max(launch, model.overhead_s - timing),
        weight_grad_overhead_s=max(launch, model.weight_grad_overhead_s - timing),
    )


def _labelled_sources(data: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    """Each part's source from a profile, with the error that applies to it: on held-out shapes the fit never saw
    where the profile has them (the shipped profiles), else leave-one-out, else in-sample (the fit's own rows)."""
    errors, held_out = data.get("errors", {}), data.get("held_out_errors", {})
    labelled = []
    for part, label in data.get("sources", {}).items():
        error, kind = held_out.get(part), "held-out error"
        if not error:
            error, kind = errors.get(f"{part}_leave_one_out"), "leave-one-out error"
        if not error:
            error, kind = errors.get(part), "in-sample error"
        if error:
            label += f" ({kind} median {100 * error['median']:.1f}%, p90 {100 * error['p90']:.1f}%, n={error['count']})"
        labelled.append((part, label))
    if not labelled:
        labelled.append(("all", f"measured profile {path.name}"))
    return tuple(labelled)


@functools.lru_cache(maxsize=32)
def _profile_model(path: str, content: bytes) -> CostModel:
    """The model of a profile file's content (the content is the key: a rewritten file is parsed again)."""
    return _parse_profile(Path(path), content)


@functools.lru_cache(maxsize=32)
def _assumed_moe_kernels(bandwidth: float) -> tuple[tuple[str, tuple[str, ...], tuple[float, ...]], ...]:
    """The H200 executor's router, permutation and un-permutation device costs (the shipped H200 profile's) at an
    effective `bandwidth` (bytes/s): what a GPU without a measured profile is assumed to spend there."""
    reference = shipped_profile("H200")
    if not reference or not reference.get("phase_fit"):
        return ()
    measured = reference["memory_bytes_per_s"] * reference["memory_efficiency"]
    fits = scaled_phase_fit({"memory_bytes_per_s": measured, "phase_fit": reference["phase_fit"]}, bandwidth)
    return tuple(sorted(phase_fit_entry(key, value) for key, value in fits.items()))
