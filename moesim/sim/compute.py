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

A rank's experts are one grouped GEMM per projection on a GPU. A profile that carries a
`grouped_gemm` model (`moesim.sim.grouped`, fitted to measured grouped GEMMs) costs them
so, from every expert's rows together, forward and backward (input and weight
gradients); without one they are costed as separate GEMMs one after another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.sim.grouped import GroupedGemmModel

DEFAULT_MAX_EFFICIENCY = 0.75  # large bf16 GEMMs reach about 70-80% of dense peak on Hopper/Ampere
DEFAULT_HALF_ROWS = 128.0  # rows at which a GEMM reaches half of that
DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_ATTENTION_EFFICIENCY = 0.5  # FlashAttention-2/3 forward on H100: ~50-70% of peak
DEFAULT_LAUNCH_SECONDS = 4e-6
DEFAULT_BACKWARD_GEMM_FACTOR = 2.0  # a GEMM's backward: two GEMMs of its size (input and weight gradients)

@dataclass(frozen=True)
class PhaseWork:
    """What one rank does in one MoE layer: the quantities the calibrated phase models are linear in."""

    tokens: float
    hidden: int
    experts: int
    top_k: int
    slots: float = 0.0  # served token-expert pairs (drops excluded)
    carried_rows: float = 0.0  # rows the permutation carries (a bound known before routing: padded for drops)
    sort_keys: float = 0.0  # entries the permutation sorts: tokens x slots per token
    active_experts: int = 0
    rows: float = 0.0  # rows the rank's experts process
    ffn_seconds: float = 0.0  # the FFN arithmetic the kernel models predict
    router_gemm_seconds: float = 0.0
    backward_seconds: float = 0.0  # the experts' backward the kernel models predict
    other_seconds: float = 0.0  # the router's and shared experts' forward
    shuffle_seconds: float = 0.0  # the permute and unpermute forward (their backward: a scatter-add and a gather)
    recording: bool = False  # autograd records the pass for a backward (more host work per kernel)


FEATURES: dict[str, Any] = {
    "1": lambda w: 1.0,
    "tokens x hidden x experts": lambda w: w.tokens * w.hidden * w.experts,
    "router GEMM seconds": lambda w: w.router_gemm_seconds,
    "tokens x experts": lambda w: w.tokens * w.experts,
    "tokens x top_k": lambda w: w.tokens * w.top_k,
    "slots": lambda w: w.slots,
    "slots x hidden": lambda w: w.slots * w.hidden,
    "sort keys": lambda w: w.sort_keys,
    "carried rows": lambda w: w.carried_rows,
    "carried rows x hidden": lambda w: w.carried_rows * w.hidden,
    "tokens x hidden": lambda w: w.tokens * w.hidden,
    "FFN arithmetic seconds": lambda w: w.ffn_seconds,
    "active experts": lambda w: float(w.active_experts),
    "rows x hidden": lambda w: w.rows * w.hidden,
    "experts backward seconds": lambda w: w.backward_seconds,
    "permute and unpermute forward seconds": lambda w: w.shuffle_seconds,
    "router and shared forward seconds": lambda w: w.other_seconds,
    "autograd": lambda w: 1.0 if w.recording else 0.0,
}
"""Every quantity a phase model may be linear in, by the name a profile records."""

HOST_PHASE_FEATURES: dict[str, tuple[str, ...]] = {
    "router": ("1", "tokens x hidden x experts", "tokens x experts", "tokens x top_k"),
    "permute": ("1", "slots", "slots x hidden"),
    "unpermute": ("1", "slots", "slots x hidden", "tokens x hidden"),
    "experts": ("FFN arithmetic seconds", "active experts", "rows x hidden"),
}
"""What each calibrated phase is linear in on the CPU across ranks (the multi-rank calibration): the router's
GEMM, its element-wise work over the score matrix and its per-choice work (capacity positions); the
permutation's index work and gathered hidden vectors; the un-permutation's weighted scatter-add into a
fresh output of every token; for the experts phase, the FFN time the GEMM curve predicts (its
coefficient: how the expert loop inside the layer compares with the micro-benchmarks, whose caches stay
warm), per-expert bookkeeping and the local sort of the rows."""

DEVICE_PHASE_FEATURES: dict[str, tuple[str, ...]] = {
    "router": ("1", "autograd", "router GEMM seconds", "tokens x experts", "tokens x top_k"),
    "permute": ("1", "autograd", "sort keys", "carried rows x hidden"),
    "unpermute": ("1", "autograd", "carried rows", "carried rows x hidden", "tokens x hidden"),
    "experts": ("FFN arithmetic seconds", "1", "autograd", "active experts", "rows x hidden"),
    "shared_experts": ("FFN arithmetic seconds", "1"),
    "backward": ("experts backward seconds", "permute and unpermute forward seconds", "router and shared forward seconds",
                 "1"),
}
"""The same on one device (the single-device calibration, GPUs). Features come in order of weight: a fit to
few layers keeps the first ones only. A GPU phase of small kernels lasts as long as the host takes to launch
them ("1"; more while autograd records the pass) unless the device work is longer: the router's projection
costed by the dense GEMM model, the permutation's sort of every slot and the rows it carries (a capacity pads
them), the un-permutation's scatter-add. The backward of the MoE block: the experts' from the kernel models,
the permutation's and un-permutation's (a scatter-add and a gather of the same rows) relative to their
forward, the router's and the shared experts' relative to theirs."""


def feature_vector(names: Sequence[str], work: PhaseWork) -> tuple[float, ...]:
    """The values of the named features for `work`."""
    return tuple(float(FEATURES[name](work)) for name in names)


def host_phase_features(phase: str, tokens: float, hidden: int, experts: int, top_k: int, slots: Optional[float] = None,
                        active_experts: int = 0, rows: float = 0.0, ffn_seconds: float = 0.0,
                        backward_seconds: float = 0.0, other_seconds: float = 0.0) -> tuple[float, ...]:
    """The feature vector of `HOST_PHASE_FEATURES[phase]` for one layer on one rank (slots default: tokens x top_k)."""
    slots = tokens * top_k if slots is None else slots
    work = PhaseWork(tokens, hidden, experts, top_k, slots=slots, carried_rows=slots, sort_keys=tokens * top_k,
                     active_experts=active_experts, rows=rows, ffn_seconds=ffn_seconds, backward_seconds=backward_seconds,
                     other_seconds=other_seconds)
    return feature_vector(HOST_PHASE_FEATURES[phase], work)


def router_fit_key(strategy: str, capacity_factor: Optional[float]) -> str:
    """The `phase_fit` key of a routing rule's router phase (expert choice always has a capacity)."""
    capped = capacity_factor is not None and strategy != "expert_choice"
    return f"router:{strategy}{'+capacity' if capped else ''}"


def _phase_fit_entry(key: str, value: Any) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    phase = key.split(":")[0]
    names = tuple(value.get("features") or HOST_PHASE_FEATURES.get(phase, ()))
    coefficients = tuple(float(c) for c in value["coefficients"])
    unknown = [name for name in names if name not in FEATURES]
    if phase not in DEVICE_PHASE_FEATURES or unknown or len(coefficients) != len(names):
        raise ValueError(f"phase_fit '{key}' needs {len(names)} coefficients for {names}"
                         + (f"; unknown features {unknown}" if unknown else ""))
    return key, names, coefficients


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
                grouped=GroupedGemmModel.from_dict(data["grouped_gemm"]) if data.get("grouped_gemm") else None,
                dense=GroupedGemmModel.from_dict(data["dense_gemm"]) if data.get("dense_gemm") else None,
                source=f"measured profile {path.name}",
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
        if self.dense is not None:
            return self.dense.dense_seconds(rows_array, inner, cols, element_bytes)
        flops = 2.0 * rows_array * inner * cols
        moved = element_bytes * (rows_array * inner + inner * cols + rows_array * cols)
        compute = flops / (self.peak_flops * self.efficiency(rows_array))
        memory = moved / (self.memory_bytes_per_s * self.memory_efficiency)
        busy = np.where(rows_array > 0, np.maximum(compute, memory), 0.0)
        return busy + self.kernel_launch_s

    def ffn_seconds(
        self, rows: np.ndarray | float, hidden: int, inner: int, gated: bool, element_bytes: int = 2
    ) -> np.ndarray:
        """FFN(s) on `rows` tokens: up (and gate) projection, activation, down projection."""
        width = 2 * inner if gated else inner
        rows = np.asarray(rows, dtype=float)
        activation = rows * (width + inner) * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)
        return self.gemm_seconds(rows, hidden, width, element_bytes) + self.gemm_seconds(rows, inner, hidden, element_bytes) + activation

    def experts_ffn_seconds(self, rows_per_expert: Sequence[float] | np.ndarray, hidden: int, inner: int, gated: bool,
                            element_bytes: int = 2) -> float:
        """A rank's experts' FFNs forward: grouped GEMMs (up, down) and the activation, or the FFNs one after another."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return float(self.ffn_seconds(rows, hidden, inner, gated, element_bytes).sum())
        width = 2 * inner if gated else inner
        return (self.grouped.seconds(rows, hidden, width, element_bytes) + self.activation_seconds(rows.sum(), inner, gated)
                + self.grouped.seconds(rows, inner, hidden, element_bytes))

    def activation_seconds(self, rows: float, inner: int, gated: bool, element_bytes: int = 2, backward: bool = False) -> float:
        """The FFN nonlinearity as eager torch runs it, in passes over memory: gated, the activation of the gate half
        (read, write) then its product with the other half (two reads, a write), 5 x inner per row; the backward
        reads the gradient, both halves and the activation, and writes both halves' gradients, 7 x inner."""
        passes = (7 if backward else 5) if gated else (3 if backward else 2)
        return rows * passes * inner * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)

    def experts_ffn_backward_seconds(self, rows_per_expert: Sequence[float] | np.ndarray, hidden: int, inner: int, gated: bool,
                                     element_bytes: int = 2) -> float:
        """Their backward: per projection the input gradient (a grouped GEMM of the transposed shape) and the weight gradient."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return self.backward_gemm_factor * self.experts_ffn_seconds(rows, hidden, inner, gated, element_bytes)
        width = 2 * inner if gated else inner
        model = self.grouped
        activation = self.activation_seconds(rows.sum(), inner, gated, element_bytes, backward=True)
        return (model.seconds(rows, hidden, inner, element_bytes) + model.weight_grad_seconds(rows, inner, hidden, element_bytes)
                + activation
                + model.seconds(rows, width, hidden, element_bytes) + model.weight_grad_seconds(rows, hidden, width, element_bytes))

    def memory_seconds(self, size_bytes: float) -> float:
        """A memory-bound kernel moving `size_bytes`."""
        return size_bytes / (self.memory_bytes_per_s * self.memory_efficiency) + self.kernel_launch_s

    def attention_seconds(self, flops: float) -> float:
        """Attention scores (QK^T, softmax, AV) of `flops`."""
        return flops / (self.peak_flops * self.attention_efficiency) + self.kernel_launch_s
