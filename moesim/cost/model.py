"""`CostModel`: how long a compute kernel takes on one GPU, and what each figure rests on.

Three grades of model, each labelled in `sources` (`source_of(part)`) with its error
where one was measured:
* a shipped device profile (`moesim.cost`: H200, H100-SXM measured, H800 derived
  from the H100) or one measured by `moesim calibrate` (`moesim.cost.model_from_profile`): GEMMs by shape
  (`moesim.cost.grouped`: tiles, waves, the library's tile choice, split contraction),
  grouped expert GEMMs from every group's rows together, backward GEMMs (input gradients
  of the transposed shape, weight gradients contracting over the rows), fp8 GEMMs as measured
  (`moesim.cost.fp8_gemms`) or by speedups (`moesim.cost.fp8`), attention and copies as measured;
* a datasheet GPU (`moesim.cost.model_for_gpu` on any other preset): datasheet peaks with an assumed
  efficiency curve, a GEMM of `rows x inner` by `inner x cols` taking

    max(2 x rows x inner x cols / (peak x efficiency(rows)),  bytes moved / (HBM bandwidth x memory_efficiency))
    + kernel_launch_s

  with efficiency(rows) = max_efficiency x rows / (rows + half_rows), experts as separate
  GEMMs one after another, backward GEMMs `backward_gemm_factor` (2) x forward, and fp8
  an assumed share of the datasheet's fp8/bf16 ratio;
* a CPU profile (`moesim calibrate` on CPU): an efficiency curve by rows and the executor's phase models.

Measured phase models (`phase_fit`, linear in named `FEATURES`) replace the roofline of
a phase where a profile has one: the router, permutation and un-permutation as the
kernels and host launches they are (a top-k over the scores, a sort, gathers, a
scatter-add: shipped profiles carry the H200 executor's measured costs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from moesim.cost.attention_backward import backward_slowdown
from moesim.cost.fp8 import Fp8Speedup, assumed_speedup
from moesim.cost.fp8_gemms import MeasuredGemms
from moesim.cost.grouped import GroupedGemmModel
from moesim.cost.phase_features import PhaseWork, feature_vector
from moesim.errors import MoesimError

DEFAULT_MAX_EFFICIENCY = 0.75  # large bf16 GEMMs reach about 70-80% of dense peak on Hopper/Ampere
DEFAULT_HALF_ROWS = 128.0  # rows at which a GEMM reaches half of that
DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_ATTENTION_EFFICIENCY = 0.5  # FlashAttention-2/3 forward on H100: ~50-70% of peak
DEFAULT_LAUNCH_SECONDS = 4e-6
ATTENTION_BLOCK = 128
"""Queries (and keys) a FlashAttention tile holds: a causal mask's diagonal tiles run whole."""
ATTENTION_SMS = 132
"""Multiprocessors the attention blocks spread over where the model knows no GPU's (an H100's or H800's)."""


def causal_tile_share(sequence: float) -> float:
    """The share of a causal attention's full QK^T that runs, counted in whole tiles of `ATTENTION_BLOCK`:
    n(n + 1) / 2 of n^2 tiles for n blocks (1/2 as the sequence grows; 5/8 at 512 tokens)."""
    blocks = max(1, math.ceil(sequence / ATTENTION_BLOCK))
    return (blocks + 1) / (2 * blocks)


DEFAULT_BACKWARD_GEMM_FACTOR = 2.0  # a GEMM's backward: two GEMMs of its size (input and weight gradients)
KERNEL_FIELDS = ("peak_bf16_tflops", "peak_fp8_tflops", "hbm_tb_per_s")
"""The GPU preset fields a measured kernel profile stands for (interconnect fields are the network model's)."""


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
    fp8_gemms: Optional[MeasuredGemms] = None
    """Plain FP8 GEMMs as measured (`moesim.cost.fp8_gemms`), from its fewest rows up; None: the speedups."""
    attention_overhead_s: float = DEFAULT_LAUNCH_SECONDS
    attention_block_s: float = 0.0
    """A query block's own cost in a FlashAttention kernel beyond its tiles' FLOPs (loading its queries, the
    softmax's last pass, writing its output), the blocks spread over the SMs: why short prompts run below long ones'
    rate. Fitted to stream timings where a profile has them, else 0."""
    ffn_backward_overhead_s: float = 0.0
    """Autograd's fixed cost of an FFN's backward beyond its kernels (measured with the dense backward)."""
    sources: tuple[tuple[str, str], ...] = ()
    """What each part of the model rests on (part, label with its measured error)."""

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
        fewest = table.fewest_rows(inner, cols)

        def speedup(count: float) -> float:
            measured = table.speedup(count, inner, cols)
            if count >= fewest or grouped:  # a grouped GEMM's bytes depend on all its groups: `_grouped_fp8`
                return measured
            return max(measured, self._halved_bytes_speedup(np.array([count]), inner, cols, False))

        return np.vectorize(speedup)(rows)

    def _halved_bytes_speedup(self, rows: np.ndarray, inner: int, cols: int, grouped: bool) -> float:
        """bf16 over fp8 time of the GEMM model at the same rate with inputs and weights in one byte, not two (the
        groups' rows for a grouped GEMM): what halving the bytes gains where reading them bounds the GEMM."""
        if rows.sum() <= 0:
            return 1.0
        if grouped and self.grouped is not None:
            return self.grouped.seconds(rows, inner, cols, 2) / self.grouped.seconds(rows, inner, cols, 1)
        if not grouped and self.dense is not None:
            ratio = self.dense.dense_seconds(rows, inner, cols, 2) / self.dense.dense_seconds(rows, inner, cols, 1)
            return float(ratio[0])
        return 1.0

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
        return self._fp8(seconds, rows_array, inner, cols) if fp8 else seconds

    def _fp8(self, bf16_seconds: np.ndarray, rows: np.ndarray, inner: int, cols: int) -> np.ndarray:
        """A plain GEMM in FP8: measured where the table has its rows, else the bf16 time over the speedup."""
        speedup = bf16_seconds / self.fp8_speedup(rows, inner, cols)
        table = self.fp8_gemms
        if table is None:
            return speedup
        return np.where(rows >= table.fewest_rows, table.seconds(rows, inner, cols), speedup)

    def _fp8_backward(self, seconds: np.ndarray, rows: np.ndarray, inner: int, cols: int, input_grad: bool) -> Any:
        """A GEMM's FP8 backward as measured where the table has its rows (input gradient: the transposed GEMM,
        with `input_grad`; weight gradient: `[inner x rows] @ [rows x cols]`), else `seconds`."""
        table = self.fp8_gemms
        if table is None:
            return seconds
        weight = np.array(
            [
                float(table.seconds(np.array([inner]), int(count), cols)[0]) if count > 0 else 0.0
                for count in rows.ravel()
            ]
        ).reshape(rows.shape)
        measured = weight + (table.seconds(rows, cols, inner) if input_grad else 0.0)
        return np.where(rows >= table.fewest_rows, measured, seconds)

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
        if not fp8:
            return seconds
        return self._fp8_backward(seconds / self.fp8_speedup(rows_array, inner, cols), rows_array, inner, cols, True)

    def gemm_weight_grad_seconds(
        self, rows: np.ndarray | float, inner: int, cols: int, element_bytes: int = 2, fp8: bool = False
    ) -> np.ndarray:
        """The weight-gradient part of `gemm_backward_seconds` (without a measured model: half of it)."""
        rows_array = np.asarray(rows, dtype=float)
        if self.dense is None:
            return self.backward_gemm_factor / 2 * self.gemm_seconds(rows_array, inner, cols, element_bytes, fp8)
        seconds = self.dense.dense_weight_grad_seconds(rows_array, inner, cols, element_bytes)
        if not fp8:
            return seconds
        return self._fp8_backward(seconds / self.fp8_speedup(rows_array, inner, cols), rows_array, inner, cols, False)

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
        return (
            self.gemm_seconds(rows, hidden, width, element_bytes, fp8)
            + self.gemm_seconds(rows, inner, hidden, element_bytes, fp8)
            + self.ffn_activation_seconds(rows, inner, gated, element_bytes)
        )

    def ffn_activation_seconds(self, rows: Any, inner: int, gated: bool, element_bytes: int = 2) -> Any:
        """The activation inside `ffn_seconds`: one pass reading the up projection's output (both halves when
        gated) and writing the activated `inner` columns, no launch of its own."""
        width = 2 * inner if gated else inner
        return rows * (width + inner) * element_bytes / (self.memory_bytes_per_s * self.memory_efficiency)

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
        """The fp8 speedup of a grouped GEMM: the measured one at its mean rows per active group, at least what
        halving the bytes gains where it has fewer rows than the table measured (`moesim.cost.fp8`)."""
        active = rows[rows > 0]
        if not fp8 or not active.size:
            return 1.0
        measured = float(self.fp8_speedup(active.mean(), inner, cols, grouped=True))
        table = self.fp8_grouped or self.fp8_dense
        if table is None or active.mean() >= table.fewest_rows(inner, cols):
            return measured
        return max(measured, self._halved_bytes_speedup(rows, inner, cols, True))

    def experts_ffn_seconds(
        self,
        rows_per_expert: Sequence[float] | np.ndarray,
        hidden: int,
        inner: int,
        gated: bool,
        element_bytes: int = 2,
        fp8: bool = False,
        fused: bool = False,
        weight_bytes: float | None = None,
    ) -> float:
        """A rank's experts' FFNs forward: grouped GEMMs (up, down) and the activation, or the FFNs one after
        another; `fused`: an engine's fused activation (the grouped GEMMs stay as measured: CUTLASS kernels, as
        the engines' own); `weight_bytes`: weights in a 4-bit weight-only format, read at that size and computed
        in bf16 (no fp8 speedup)."""
        rows = np.asarray(rows_per_expert, dtype=float)
        if self.grouped is None:
            return float(self.ffn_seconds(rows, hidden, inner, gated, element_bytes, fp8).sum())
        width = 2 * inner if gated else inner
        if weight_bytes is not None:
            return (
                self.grouped.seconds(rows, hidden, width, element_bytes, weight_bytes)
                + self.activation_seconds(rows.sum(), inner, gated, element_bytes, fused=fused)
                + self.grouped.seconds(rows, inner, hidden, element_bytes, weight_bytes)
            )
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
        kernel (`fused`, forward) reads both halves once and writes the product: 3 x inner (2 ungated). Each kernel
        also costs its launch and tail in the stream (two gated, one fused)."""
        if fused and not backward:
            passes, kernels = (3 if gated else 2), 1
        else:
            passes = (7 if backward else 5) if gated else (3 if backward else 2)
            kernels = 2 if gated else 1  # the gate's activation, then the product
        bandwidth = self.memory_bytes_per_s * self.memory_efficiency
        return rows * passes * inner * element_bytes / bandwidth + kernels * self.kernel_launch_s

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

    def attention_backward_slowdown(self, tokens: float) -> float:
        """The attention forward's rate over its backward's, per FLOP (`moesim.cost.attention_backward`)."""
        return backward_slowdown(tokens)

    def attention_seconds(self, flops: float, query_blocks: float = 0.0) -> float:
        """Attention scores (QK^T, softmax, AV) of `flops` (causal: the diagonal's tiles counted whole,
        `causal_tile_share`): a fixed cost, FLOPs at the attention kernel's rate, and each of `query_blocks` blocks'
        own cost spread over the SMs."""
        sms = self.dense.sms if self.dense is not None else ATTENTION_SMS
        return (
            flops / (self.peak_flops * self.attention_efficiency)
            + self.attention_overhead_s
            + query_blocks * self.attention_block_s / sms
        )
