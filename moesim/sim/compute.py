"""`CostModel`: how long a compute kernel takes on one GPU.

Roofline with an efficiency curve: a GEMM of `rows x inner` by `inner x cols` takes

    max(2 x rows x inner x cols / (peak x efficiency(rows)),  bytes moved / (HBM bandwidth x memory_efficiency))
    + kernel_launch_s

where efficiency(rows) = max_efficiency x rows / (rows + half_rows): small GEMMs (a
lightly loaded expert, a decode step) reach a small share of peak, large ones approach
`max_efficiency`. Memory-bound kernels (permutation, softmax, optimizer step) take
bytes / (bandwidth x memory_efficiency). Attention scores run at `attention_efficiency`
of peak (FlashAttention-class kernels).

Without a measured profile the efficiencies are assumptions (documented defaults; the
output says so). `CostModel.from_profile(path)` loads a measured curve (JSON written by
the calibration of the executor issue): it replaces the curve by interpolation of
measured (rows, efficiency) points in log(rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from moesim.errors import MoesimError

DEFAULT_MAX_EFFICIENCY = 0.75  # large bf16 GEMMs reach about 70-80% of dense peak on Hopper/Ampere
DEFAULT_HALF_ROWS = 128.0  # rows at which a GEMM reaches half of that
DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_ATTENTION_EFFICIENCY = 0.5  # FlashAttention-2/3 forward on H100: ~50-70% of peak
DEFAULT_LAUNCH_SECONDS = 4e-6
DEFAULT_BACKWARD_GEMM_FACTOR = 2.0  # a GEMM's backward: two GEMMs of its size (input and weight gradients)

HOST_PHASE_FEATURES: dict[str, tuple[str, ...]] = {
    "router": ("1", "tokens x hidden x experts", "tokens x experts", "tokens x top_k"),
    "permute": ("1", "slots", "slots x hidden"),
    "unpermute": ("1", "slots", "slots x hidden", "tokens x hidden"),
    "experts": ("FFN arithmetic seconds", "active experts", "rows x hidden"),
}
"""What each calibrated phase is linear in (slots: the rank's served token-expert pairs): the router's
GEMM, its element-wise work over the score matrix and its per-choice work (capacity positions); the
permutation's index work and gathered hidden vectors; the un-permutation's weighted scatter-add into a
fresh output of every token; for the experts phase, the FFN time the GEMM curve predicts (its
coefficient: how the expert loop inside the layer compares with the micro-benchmarks, whose caches stay
warm), per-expert bookkeeping and the local sort of the rows."""


def host_phase_features(phase: str, tokens: float, hidden: int, experts: int, top_k: int, slots: Optional[float] = None,
                        active_experts: int = 0, rows: float = 0.0, ffn_seconds: float = 0.0) -> tuple[float, ...]:
    """The feature vector of `HOST_PHASE_FEATURES[phase]` for one layer on one rank (slots default: tokens x top_k)."""
    slots = tokens * top_k if slots is None else slots
    values = {
        "router": (1.0, tokens * hidden * experts, tokens * experts, tokens * top_k),
        "permute": (1.0, slots, slots * hidden),
        "unpermute": (1.0, slots, slots * hidden, tokens * hidden),
        "experts": (ffn_seconds, float(active_experts), rows * hidden),
    }
    return tuple(float(value) for value in values[phase])


def router_fit_key(strategy: str, capacity_factor: Optional[float]) -> str:
    """The `phase_fit` key of a routing rule's router phase (expert choice always has a capacity)."""
    capped = capacity_factor is not None and strategy != "expert_choice"
    return f"router:{strategy}{'+capacity' if capped else ''}"


def _phase_fit_entry(key: str, value: Any) -> tuple[str, tuple[float, ...]]:
    phase = key.split(":")[0]
    coefficients = tuple(float(c) for c in value["coefficients"])
    if phase not in HOST_PHASE_FEATURES or len(coefficients) != len(HOST_PHASE_FEATURES[phase]):
        raise ValueError(f"phase_fit '{key}' needs {len(HOST_PHASE_FEATURES.get(phase, ()))} coefficients for {HOST_PHASE_FEATURES.get(phase)}")
    return key, coefficients


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
    phase_fit: tuple[tuple[str, tuple[float, ...]], ...] = ()
    """Measured host-side phase models the roofline misses (Python and launch work on a CPU): (key,
    coefficients over `HOST_PHASE_FEATURES` of the key's phase), seconds = coefficients . features.
    Keys: `router:<rule>` (`+capacity` when a capacity factor applies), `permute`, `unpermute` and
    `experts` (the experts phase of a rank, from its FFN arithmetic and bookkeeping)."""
    backward_gemm_factor: float = DEFAULT_BACKWARD_GEMM_FACTOR
    """Backward time of an FFN's GEMMs over their forward time (measured by calibration, else 2)."""
    source: str = field(default="datasheet peak x assumed efficiency curve")

    @classmethod
    def for_gpu(cls, gpu: Any) -> "CostModel":
        """The default model of a `GpuSpec`: datasheet peaks, assumed efficiencies."""
        return cls(name=gpu.name, peak_flops=gpu.peak_bf16_tflops * 1e12, memory_bytes_per_s=gpu.hbm_tb_per_s * 1e12)

    @classmethod
    def from_profile(cls, path: str | Path) -> "CostModel":
        """A measured profile (JSON): peak_flops, memory_bytes_per_s, gemm_efficiency {rows, efficiency}, ..."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            curve = data.get("gemm_efficiency", {})
            rows, efficiency = curve.get("rows"), curve.get("efficiency")
            model = cls(
                name=str(data["device"]),
                peak_flops=float(data["peak_flops"]),
                memory_bytes_per_s=float(data["memory_bytes_per_s"]),
                memory_efficiency=float(data.get("memory_efficiency", DEFAULT_MEMORY_EFFICIENCY)),
                attention_efficiency=float(data.get("attention_efficiency", DEFAULT_ATTENTION_EFFICIENCY)),
                kernel_launch_s=float(data.get("kernel_launch_s", DEFAULT_LAUNCH_SECONDS)),
                measured_rows=tuple(float(x) for x in rows) if rows else None,
                measured_efficiency=tuple(float(x) for x in efficiency) if efficiency else None,
                phase_fit=tuple(sorted(_phase_fit_entry(key, value) for key, value in data.get("phase_fit", {}).items())),
                backward_gemm_factor=float(data.get("backward_gemm_factor", DEFAULT_BACKWARD_GEMM_FACTOR)),
                source=f"measured profile {path.name}",
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise MoesimError(f"{path}: not a usable cost profile ({type(error).__name__}: {error})") from None
        if model.measured_rows is not None and (
            model.measured_efficiency is None or len(model.measured_rows) != len(model.measured_efficiency)
        ):
            raise MoesimError(f"{path}: gemm_efficiency needs 'rows' and 'efficiency' lists of equal length")
        return model

    def fitted(self, key: str, features: Sequence[float]) -> Optional[float]:
        """Seconds of a host-side phase from its measured linear model, or None when the profile has none."""
        for name, coefficients in self.phase_fit:
            if name == key:
                return float(np.dot(coefficients, features))
        return None

    # ------------------------------------------------------------ kernels
    def efficiency(self, rows: np.ndarray | float) -> np.ndarray:
        """Fraction of peak a GEMM with `rows` rows reaches."""
        rows = np.maximum(np.asarray(rows, dtype=float), 1.0)
        if self.measured_rows is not None and self.measured_efficiency is not None:
            return np.interp(np.log(rows), np.log(self.measured_rows), self.measured_efficiency)
        return self.max_efficiency * rows / (rows + self.half_rows)

    def gemm_seconds(self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2) -> np.ndarray:
        """Time of GEMM(s) [rows x inner] @ [inner x cols]; `rows` may be an array (one GEMM each)."""
        rows_array = np.asarray(rows, dtype=float)
        flops = 2.0 * rows_array * inner * cols
        moved = element_bytes * (rows_array * inner + inner * cols + rows_array * cols)
        compute = flops / (self.peak_flops * self.efficiency(rows_array))
        memory = moved / (self.memory_bytes_per_s * self.memory_efficiency)
        busy = np.where(rows_array > 0, np.maximum(compute, memory), 0.0)
        return busy + self.kernel_launch_s

    def grouped_gemm_seconds(self, rows_per_group: Sequence[float] | np.ndarray, inner: int, cols: int) -> float:
        """One grouped GEMM over experts (rows per expert may be zero): the groups run one after another."""
        rows = np.asarray(rows_per_group, dtype=float)
        return float((self.gemm_seconds(rows, inner, cols) - self.kernel_launch_s).sum() + self.kernel_launch_s)

    def ffn_seconds(
        self, rows: np.ndarray | float, hidden: int, inner: int, gated: bool, element_bytes: int = 2
    ) -> np.ndarray:
        """FFN(s) on `rows` tokens: up (and gate) projection, activation, down projection."""
        width = 2 * inner if gated else inner
        rows = np.asarray(rows, dtype=float)
        activation = rows * (width + inner) * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)
        return self.gemm_seconds(rows, hidden, width, element_bytes) + self.gemm_seconds(rows, inner, hidden, element_bytes) + activation

    def memory_seconds(self, size_bytes: float) -> float:
        """A memory-bound kernel moving `size_bytes`."""
        return size_bytes / (self.memory_bytes_per_s * self.memory_efficiency) + self.kernel_launch_s

    def attention_seconds(self, flops: float) -> float:
        """Attention scores (QK^T, softmax, AV) of `flops`."""
        return flops / (self.peak_flops * self.attention_efficiency) + self.kernel_launch_s
