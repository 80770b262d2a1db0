"""`CostModel`: how long a compute kernel takes on one GPU, and what each figure rests on.

Three grades of model, each labelled in `sources` (`source_of(part)`) with its error
where one was measured:
* a shipped device profile (`moesim.profiles`: H200, H100-SXM measured, H800 derived
  from the H100) or one measured by `moesim calibrate` (`from_profile`): GEMMs by shape
  (`moesim.sim.grouped`: tiles, waves, the library's tile choice, split contraction),
  grouped expert GEMMs from every group's rows together, backward GEMMs (input gradients
  of the transposed shape, weight gradients contracting over the rows), fp8 speedups by
  shape and rows (`moesim.sim.fp8`), attention and copies as measured;
* a datasheet GPU (`for_gpu` on any other preset): datasheet peaks with an assumed
  efficiency curve, a GEMM of `rows x inner` by `inner x cols` taking

    max(2 x rows x inner x cols / (peak x efficiency(rows)),  bytes moved / (HBM bandwidth x memory_efficiency))
    + kernel_launch_s

  with efficiency(rows) = max_efficiency x rows / (rows + half_rows), experts as separate
  GEMMs one after another, backward GEMMs `backward_gemm_factor` (2) x forward, and fp8
  an assumed share of the datasheet's fp8/bf16 ratio;
* a CPU profile (`moesim calibrate` on CPU): a measured efficiency curve by rows,
  interpolated in log(rows), and linear phase models fitted to the executor's layers.

Measured phase models (`phase_fit`, linear in named `FEATURES`) replace the roofline of
a phase where a profile has one: the router, permutation and un-permutation as the
kernels and host launches they are (a top-k over the scores, a sort, gathers, a
scatter-add: shipped profiles carry the H200 executor's measured costs).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.sim.fp8 import Fp8Speedup, assumed_speedup
from moesim.sim.grouped import GroupedGemmModel
from moesim.sim.phase_features import PhaseWork, feature_vector, phase_fit_entry

DEFAULT_MAX_EFFICIENCY = 0.75  # large bf16 GEMMs reach about 70-80% of dense peak on Hopper/Ampere
DEFAULT_HALF_ROWS = 128.0  # rows at which a GEMM reaches half of that
DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_ATTENTION_EFFICIENCY = 0.5  # FlashAttention-2/3 forward on H100: ~50-70% of peak
DEFAULT_LAUNCH_SECONDS = 4e-6
DEFAULT_BACKWARD_GEMM_FACTOR = 2.0  # a GEMM's backward: two GEMMs of its size (input and weight gradients)
KERNEL_FIELDS = ("peak_bf16_tflops", "peak_fp8_tflops", "hbm_tb_per_s")
"""The GPU preset fields a measured kernel profile stands for (interconnect fields are the network model's)."""


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
    """Each part's source from a profile, with its measured error where the profile records one."""
    errors = data.get("errors", {})
    labelled = []
    for part, label in data.get("sources", {}).items():
        error, kind = errors.get(f"{part}_leave_one_out"), "leave-one-out error"
        if not error:
            error, kind = errors.get(part), "error"
        if error:
            label += f" ({kind} median {100 * error['median']:.1f}%, p90 {100 * error['p90']:.1f}%, n={error['count']})"
        labelled.append((part, label))
    if not labelled:
        labelled.append(("all", f"measured profile {path.name}"))
    return tuple(labelled)


@functools.lru_cache(maxsize=32)
def _profile_model(path: str, content: bytes) -> "CostModel":
    """The model of a profile file's content (the content is the key: a rewritten file is parsed again)."""
    return CostModel._parse_profile(Path(path), content)


@functools.lru_cache(maxsize=32)
def _assumed_moe_kernels(bandwidth: float) -> tuple[tuple[str, tuple[str, ...], tuple[float, ...]], ...]:
    """The H200 executor's router, permutation and un-permutation device costs (the shipped H200 profile's) at an
    effective `bandwidth` (bytes/s): what a GPU without a measured profile is assumed to spend there."""
    from moesim.profiles import shipped_profile
    from moesim.profiles.shipping import scaled_phase_fit

    reference = shipped_profile("H200")
    if not reference or not reference.get("phase_fit"):
        return ()
    measured = reference["memory_bytes_per_s"] * reference["memory_efficiency"]
    fits = scaled_phase_fit({"memory_bytes_per_s": measured, "phase_fit": reference["phase_fit"]}, bandwidth)
    return tuple(sorted(phase_fit_entry(key, value) for key, value in fits.items()))


@dataclass(frozen=True)
class CostModel:
    """Compute-time model of one device."""

    name: str
    peak_flops: float
    memory_bytes_per_s: float
    max_efficiency: float = DEFAULT_MAX_EFFICIENCY
    half_rows: float = DEFAULT_HALF_ROWS
    memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY
    attention_efficiency: float = DEFAULT_ATTENTION_EFFICIENCY
    kernel_launch_s: float = DEFAULT_LAUNCH_SECONDS
    measured_rows: Optional[tuple[float, ...]] = None
    measured_efficiency: Optional[tuple[float, ...]] = None
    phase_fit: tuple[tuple[str, tuple[str, ...], tuple[float, ...]], ...] = ()
    """Measured phase models the roofline misses (host and launch work, kernels' real efficiency): (key,
    feature names from `FEATURES`, coefficients), seconds = coefficients . features.
    Keys: `router:<rule>` (`+capacity` when a capacity factor applies), `permute`, `unpermute` and
    `experts` (the experts phase of a rank, from its FFN arithmetic and bookkeeping)."""
    backward_gemm_factor: float = DEFAULT_BACKWARD_GEMM_FACTOR
    """Backward time of an FFN's GEMMs over their forward time (measured by calibration, else 2)."""
    grouped: Optional[GroupedGemmModel] = None
    """The grouped expert GEMM of a GPU (fitted to measured grouped GEMMs); None: experts one after another."""
    dense: Optional[GroupedGemmModel] = None
    """Plain GEMMs as a tile and wave roofline fitted to measured GEMMs (shape-aware); None: the efficiency curve."""
    source: str = field(default="datasheet peak x assumed efficiency curve")
    peak_fp8_flops: Optional[float] = None
    fp8_dense: Optional[Fp8Speedup] = None
    """Measured fp8 speedups of plain GEMMs by shape and rows; None: `assumed_speedup`."""
    fp8_grouped: Optional[Fp8Speedup] = None
    """The same for grouped expert GEMMs (rows per group)."""
    attention_overhead_s: float = DEFAULT_LAUNCH_SECONDS
    ffn_backward_overhead_s: float = 0.0
    """Autograd's fixed cost of an FFN's backward beyond its kernels (measured with the dense backward)."""
    sources: tuple[tuple[str, str], ...] = ()
    """What each part of the model rests on (part, label with its measured error)."""

    @classmethod
    def for_gpu(cls, gpu: Any) -> "CostModel":
        """The model of a `GpuSpec`: its shipped profile when it is a preset that has one, its compute and memory
        unchanged (measured or derived), else datasheet peaks with assumed efficiencies, and the H200's measured
        router and permutation kernels at this GPU's bandwidth."""
        from moesim.cluster.hardware import gpu_preset, gpu_preset_names
        from moesim.profiles import shipped_profile_path

        path = shipped_profile_path(gpu.name)
        if path is not None and gpu.name in gpu_preset_names():
            preset = gpu_preset(gpu.name)
            if all(getattr(gpu, name) == getattr(preset, name) for name in KERNEL_FIELDS):
                return cls.from_profile(path)
        bandwidth = gpu.hbm_tb_per_s * 1e12
        phases = _assumed_moe_kernels(bandwidth * DEFAULT_MEMORY_EFFICIENCY)
        sources = [("GEMMs, attention, memory", "datasheet peak x assumed efficiency (no measurement of this GPU)")]
        if phases:
            sources.append(
                (
                    "moe_kernels",
                    "assumed: the H200 executor's per-element device costs at this GPU's datasheet bandwidth, "
                    "host launches hidden",
                )
            )
        return cls(
            name=gpu.name,
            peak_flops=gpu.peak_bf16_tflops * 1e12,
            memory_bytes_per_s=bandwidth,
            peak_fp8_flops=(gpu.peak_fp8_tflops * 1e12) if gpu.peak_fp8_tflops else None,
            phase_fit=phases,
            sources=tuple(sources),
        )

    @classmethod
    def from_profile(cls, path: str | Path) -> "CostModel":
        """A measured profile (JSON): peak_flops, memory_bytes_per_s, gemm_efficiency {rows, efficiency}, ...

        Parsed once per content (a planner simulates hundreds of layouts on one profile)."""
        path = Path(path)
        try:
            content = path.read_bytes()
        except OSError as error:
            raise MoesimError(f"{path}: not a usable cost profile ({type(error).__name__}: {error})") from None
        return _profile_model(str(path), content)

    @classmethod
    def _parse_profile(cls, path: Path, content: bytes) -> "CostModel":
        try:
            data = json.loads(content)
            curve = data.get("gemm_efficiency", {})
            rows, efficiency = curve.get("rows"), curve.get("efficiency")
            launch = float(data.get("kernel_launch_s", DEFAULT_LAUNCH_SECONDS))
            timing = float(data.get("timing_overhead_s", 0.0))  # host synchronisation inside measured kernel times
            model = cls(
                name=str(data["device"]),
                peak_flops=float(data["peak_flops"]),
                memory_bytes_per_s=float(data["memory_bytes_per_s"]),
                memory_efficiency=float(data.get("memory_efficiency", DEFAULT_MEMORY_EFFICIENCY)),
                attention_efficiency=float(data.get("attention_efficiency", DEFAULT_ATTENTION_EFFICIENCY)),
                kernel_launch_s=launch,
                measured_rows=tuple(float(x) for x in rows) if rows else None,
                measured_efficiency=tuple(float(x) for x in efficiency) if efficiency else None,
                phase_fit=tuple(
                    sorted(phase_fit_entry(key, value) for key, value in data.get("phase_fit", {}).items())
                ),
                backward_gemm_factor=float(data.get("backward_gemm_factor", DEFAULT_BACKWARD_GEMM_FACTOR)),
                grouped=_in_stream(data.get("grouped_gemm"), timing, launch),
                dense=_in_stream(data.get("dense_gemm"), timing, launch),
                source=f"{data['source']} (profile {path.name})"
                if data.get("source")
                else f"measured profile {path.name}",
                peak_fp8_flops=float(data["peak_fp8_flops"]) if data.get("peak_fp8_flops") else None,
                fp8_dense=Fp8Speedup.from_list(data["fp8_dense_speedup"]) if data.get("fp8_dense_speedup") else None,
                fp8_grouped=Fp8Speedup.from_list(data["fp8_grouped_speedup"])
                if data.get("fp8_grouped_speedup")
                else None,
                attention_overhead_s=max(launch, float(data.get("attention_overhead_s", launch)) - timing),
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

    def coefficients(self, key: str) -> Optional[dict[str, float]]:
        """The measured linear model of a phase key by feature name, or None when the profile has none."""
        for name, names, coefficients in self.phase_fit:
            if name == key:
                return dict(zip(names, coefficients))
        return None

    def fitted(self, key: str, work: PhaseWork) -> Optional[float]:
        """Seconds of a phase from its measured linear model, or None when the profile has none."""
        for name, names, coefficients in self.phase_fit:
            if name == key:
                return float(np.dot(coefficients, feature_vector(names, work)))
        return None

    def source_of(self, part: str) -> str:
        """What a part of the model rests on ('dense_gemm', 'grouped_gemm', 'fp8_dense', ...), else the whole's
        source."""
        return dict(self.sources).get(part, self.source)

    # ------------------------------------------------------------ kernels
    def efficiency(self, rows: np.ndarray | float) -> np.ndarray:
        """Fraction of peak a GEMM with `rows` rows reaches."""
        rows = np.maximum(np.asarray(rows, dtype=float), 1.0)
        if self.measured_rows is not None and self.measured_efficiency is not None:
            return np.interp(np.log(rows), np.log(self.measured_rows), self.measured_efficiency)
        return self.max_efficiency * rows / (rows + self.half_rows)

    def fp8_speedup(self, rows: np.ndarray | float, inner: int, cols: int, grouped: bool = False) -> np.ndarray:
        """How much faster the GEMM runs in fp8 than in bf16 (rows per group for a grouped GEMM)."""
        if not self.peak_fp8_flops:
            raise MoesimError(f"{self.name} has no fp8 tensor cores: set workload.precision.gemm to bf16")
        table = (self.fp8_grouped or self.fp8_dense) if grouped else self.fp8_dense
        rows = np.asarray(rows, dtype=float)
        if table is None:
            return np.vectorize(assumed_speedup)(rows, self.peak_fp8_flops / self.peak_flops)
        return np.vectorize(lambda r: table.speedup(float(r), inner, cols))(rows)

    def gemm_seconds(
        self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """Time of GEMM(s) [rows x inner] @ [inner x cols]; `rows` may be an array (one GEMM each)."""
        rows_array = np.asarray(rows, dtype=float)
        if self.dense is not None:
            seconds = self.dense.dense_seconds(rows_array, inner, cols, element_bytes)
        else:
            flops = 2.0 * rows_array * inner * cols
            moved = element_bytes * (rows_array * inner + inner * cols + rows_array * cols)
            compute = flops / (self.peak_flops * self.efficiency(rows_array))
            memory = moved / (self.memory_bytes_per_s * self.memory_efficiency)
            seconds = np.where(rows_array > 0, np.maximum(compute, memory), 0.0) + self.kernel_launch_s
        return seconds / self.fp8_speedup(rows_array, inner, cols) if fp8 else seconds

    def gemm_backward_seconds(
        self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """The GEMM's backward: the input gradient (a GEMM of the transposed shape) and the weight gradient (a GEMM
        contracting over the rows) from a measured model, else `backward_gemm_factor` x the forward."""
        rows_array = np.asarray(rows, dtype=float)
        if self.dense is None:
            return self.backward_gemm_factor * self.gemm_seconds(rows_array, inner, cols, element_bytes, fp8)
        seconds = self.dense.dense_seconds(
            rows_array, cols, inner, element_bytes
        ) + self.dense.dense_weight_grad_seconds(rows_array, inner, cols, element_bytes)
        return seconds / self.fp8_speedup(rows_array, inner, cols) if fp8 else seconds

    def gemm_weight_grad_seconds(
        self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """The weight-gradient part of `gemm_backward_seconds` (without a measured model: half of it)."""
        rows_array = np.asarray(rows, dtype=float)
        if self.dense is None:
            return self.backward_gemm_factor / 2 * self.gemm_seconds(rows_array, inner, cols, element_bytes, fp8)
        seconds = self.dense.dense_weight_grad_seconds(rows_array, inner, cols, element_bytes)
        return seconds / self.fp8_speedup(rows_array, inner, cols) if fp8 else seconds

    def ffn_weight_grad_seconds(
        self, rows: np.ndarray | float, hidden: int, inner: int, gated: bool, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """The weight-gradient part of `ffn_backward_seconds`: both projections' weight gradients."""
        width = 2 * inner if gated else inner
        return self.gemm_weight_grad_seconds(rows, hidden, width, element_bytes, fp8) + self.gemm_weight_grad_seconds(
            rows, inner, hidden, element_bytes, fp8
        )

    def experts_ffn_weight_grad_seconds(
        self,
        rows_per_expert: Sequence[float] | np.ndarray,
        hidden: int,
        inner: int,
        gated: bool,
        element_bytes: int = 2,
        fp8: bool = False,
    ) -> float:
        """The weight-gradient part of `experts_ffn_backward_seconds` (grouped, or the experts one by one)."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return float(self.ffn_weight_grad_seconds(rows, hidden, inner, gated, element_bytes, fp8).sum())
        width = 2 * inner if gated else inner
        model = self.grouped
        down = model.weight_grad_seconds(rows, inner, hidden, element_bytes) / self._grouped_fp8(
            rows, inner, hidden, fp8
        )
        up = model.weight_grad_seconds(rows, hidden, width, element_bytes) / self._grouped_fp8(rows, hidden, width, fp8)
        return down + up

    def ffn_seconds(
        self, rows: np.ndarray | float, hidden: int, inner: int, gated: bool, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """FFN(s) on `rows` tokens: up (and gate) projection, activation, down projection."""
        width = 2 * inner if gated else inner
        rows = np.asarray(rows, dtype=float)
        activation = rows * (width + inner) * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)
        return (
            self.gemm_seconds(rows, hidden, width, element_bytes, fp8)
            + self.gemm_seconds(rows, inner, hidden, element_bytes, fp8)
            + activation
        )

    def ffn_backward_seconds(
        self, rows: np.ndarray | float, hidden: int, inner: int, gated: bool, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """Their backward: both projections' gradients, the activation's and autograd's fixed cost."""
        width = 2 * inner if gated else inner
        rows = np.asarray(rows, dtype=float)
        if self.dense is None:
            return self.backward_gemm_factor * self.ffn_seconds(rows, hidden, inner, gated, element_bytes, fp8)
        return (
            self.gemm_backward_seconds(rows, hidden, width, element_bytes, fp8)
            + self.gemm_backward_seconds(rows, inner, hidden, element_bytes, fp8)
            + self.activation_seconds(rows, inner, gated, element_bytes, backward=True)
            + self.ffn_backward_overhead_s
        )

    def _grouped_fp8(self, rows: np.ndarray, inner: int, cols: int, fp8: bool) -> float:
        active = rows[rows > 0]
        return float(self.fp8_speedup(active.mean(), inner, cols, grouped=True)) if fp8 and active.size else 1.0

    def experts_ffn_seconds(
        self,
        rows_per_expert: Sequence[float] | np.ndarray,
        hidden: int,
        inner: int,
        gated: bool,
        element_bytes: int = 2,
        fp8: bool = False,
        fused: bool = False,
    ) -> float:
        """A rank's experts' FFNs forward: grouped GEMMs (up, down) and the activation, or the FFNs one after
        another; `fused`: an engine's fused activation (the grouped GEMMs stay as measured: CUTLASS kernels, as
        the engines' own)."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return float(self.ffn_seconds(rows, hidden, inner, gated, element_bytes, fp8).sum())
        width = 2 * inner if gated else inner
        up_fp8 = self._grouped_fp8(rows, hidden, width, fp8)
        down_fp8 = self._grouped_fp8(rows, inner, hidden, fp8)
        return (
            self.grouped.seconds(rows, hidden, width, element_bytes) / up_fp8
            + self.activation_seconds(rows.sum(), inner, gated, element_bytes, fused=fused)
            + self.grouped.seconds(rows, inner, hidden, element_bytes) / down_fp8
        )

    def activation_seconds(
        self, rows: Any, inner: int, gated: bool, element_bytes: int = 2, backward: bool = False, fused: bool = False
    ) -> Any:
        """The FFN nonlinearity as eager torch runs it, in passes over memory: gated, the activation of the gate half
        (read, write) then its product with the other half (two reads, a write), 5 x inner per row; the backward
        reads the gradient, both halves and the activation, and writes both halves' gradients, 7 x inner. A fused
        kernel (`fused`, forward) reads both halves once and writes the product: 3 x inner (2 ungated)."""
        if fused and not backward:
            return (
                rows * (3 if gated else 2) * inner * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)
            )
        passes = (7 if backward else 5) if gated else (3 if backward else 2)
        return rows * passes * inner * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)

    def experts_ffn_backward_seconds(
        self,
        rows_per_expert: Sequence[float] | np.ndarray,
        hidden: int,
        inner: int,
        gated: bool,
        element_bytes: int = 2,
        fp8: bool = False,
    ) -> float:
        """Their backward: per projection the input gradient (a grouped GEMM of the transposed shape) and the weight
        gradient; fp8 gains the forward's measured speedup (DeepSeek-V3 runs both gradients in fp8)."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return self.backward_gemm_factor * self.experts_ffn_seconds(rows, hidden, inner, gated, element_bytes, fp8)
        width = 2 * inner if gated else inner
        model = self.grouped
        down = model.seconds(rows, hidden, inner, element_bytes) + model.weight_grad_seconds(
            rows, inner, hidden, element_bytes
        )
        up = model.seconds(rows, width, hidden, element_bytes) + model.weight_grad_seconds(
            rows, hidden, width, element_bytes
        )
        return (
            down / self._grouped_fp8(rows, inner, hidden, fp8)
            + up / self._grouped_fp8(rows, hidden, width, fp8)
            + self.activation_seconds(rows.sum(), inner, gated, element_bytes, backward=True)
        )

    def memory_seconds(self, size_bytes: float) -> float:
        """A memory-bound kernel moving `size_bytes`."""
        return size_bytes / (self.memory_bytes_per_s * self.memory_efficiency) + self.kernel_launch_s

    def attention_seconds(self, flops: float) -> float:
        """Attention scores (QK^T, softmax, AV) of `flops`: a fixed cost, then FLOPs at the attention kernel's rate."""
        return flops / (self.peak_flops * self.attention_efficiency) + self.attention_overhead_s
