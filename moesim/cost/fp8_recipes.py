"""The memory passes that make one FP8 linear layer's operands in training, by the stack's cast kernels and recipe.

An FP8 GEMM multiplies FP8 operands, so a training step quantises each FP8 linear layer's input for the forward
GEMM (row-wise: its scales run along the reduction dimension), its output gradient for the data-gradient GEMM
(row-wise) and both again column-wise (transposed) for the weight-gradient GEMM. How many passes that takes is the
stack's choice, and these functions count it in bytes per element of each tensor:

- `transformer-engine`: Transformer Engine's fused cast-transpose (`transformer_engine/common/transpose/
  cast_transpose.cu`; for block scaling `quantize_transpose_vector_blockwise`) reads the bf16 tensor once and writes
  the row-wise and the column-wise FP8 copies together; the forward's column-wise copy of the input is what the
  backward keeps. The weights are cast (both copies) once a step, on the first micro-batch (`is_first_microbatch`,
  `transformer_engine.pytorch.module.linear`).
- `deepseek`: DeepSeek-V3's kernels as its training profile shows them (deepseek-ai/profile-data train.json, read
  into `validation/deepseek-profile-data/train_kernels.json`): a per-token (1 x 128) cast for each GEMM input with a
  second small kernel that lays the scales out for the GEMM (`transpose<512, 128, 4, 4>`), and, in the backward, the
  per-channel (128 x 1) cast-and-transpose as a separate pass (`per_channel_cast_and_transpose`), from the bf16
  tensor or straight from an FP8 copy; the FP8 weights are transposed for the data-gradient GEMM in every
  micro-batch (`batched_transpose`). The technical report (arXiv 2412.19437) says why in its hardware suggestions
  (section 3.5.2: activations stored as 1 x 128 tiles are read out, dequantised, transposed and re-quantised into
  128 x 1 tiles for the backward), and DeepGEMM's README: its FP8 GEMMs take only the NT layout.

The recipe sets the scale bookkeeping (Megatron-LM's `--fp8-recipe`, `megatron/training/arguments.py`, default
`delayed`): `delayed` scaling finds the tensor's amax inside the cast (the scale comes from the history), `tensorwise`
(current) scaling reads the tensor once more for its amax before the cast (Transformer Engine's
`Float8CurrentScaling`: an amax kernel, then the cast), `blockwise` writes an fp32 scale per 128 elements beside the
FP8 values (DeepSeek-V3's 1 x 128 / 128 x 128), `mxfp8` an 8-bit scale per 32 (OCP microscaling).

Each pass is memory-bound: the caller prices the bytes at the measured copy bandwidth, one launch a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CastKernels = Literal["transformer-engine", "deepseek"]
Recipe = Literal["delayed", "tensorwise", "blockwise", "mxfp8"]

BF16_BYTES = 2.0
FP8_BYTES = 1.0
SCALE_BYTES_PER_ELEMENT: dict[str, float] = {"delayed": 0.0, "tensorwise": 0.0, "blockwise": 4 / 128, "mxfp8": 1 / 32}
"""Scale bytes written per FP8 element: none for one scale a tensor, fp32 per 128 (blockwise), e8m0 per 32 (mxfp8)."""

E5M6_BYTES = 1.5
"""DeepSeek-V3 keeps the attention output (the output projection's input, which the attention's backward needs too)
in its own 12-bit E5M6 format (report section 3.3.4)."""


@dataclass(frozen=True)
class FP8Linear:
    """One FP8 linear layer as its casts see it.

    `input_fp8`: its input arrives as a row-wise FP8 copy (tokens dispatched in FP8; DeepSeek's SwiGLU kernel that
    writes FP8), so the forward casts nothing. `gradient_fp8`: its output gradient arrives in FP8 (the combine's
    backward sent in the dispatch's FP8). `kept_fp8`: the backward finds the input only as a row-wise FP8 copy
    (the dispatched tokens; an input kept in FP8 and not recomputed), so its column-wise copy is made from FP8; a
    recomputed input is bf16 again."""

    inner: int
    width: int
    input_fp8: bool = False
    gradient_fp8: bool = False
    kept_fp8: bool = False


@dataclass(frozen=True)
class CastCost:
    """Bytes moved per element of the linear's input and of its output gradient, and the kernels launched."""

    input: float = 0.0
    gradient: float = 0.0
    kernels: int = 0

    def __add__(self, other: "CastCost") -> "CastCost":
        return CastCost(self.input + other.input, self.gradient + other.gradient, self.kernels + other.kernels)


def _quantise(recipe: Recipe, source: float, copies: int) -> tuple[float, int]:
    """(bytes per element, kernels) of reading a `source`-byte tensor and writing `copies` FP8 copies of it, with
    the recipe's amax pass (tensorwise: over a bf16 source) and scales."""
    amax = BF16_BYTES if recipe == "tensorwise" and source == BF16_BYTES else 0.0
    return amax + source + copies * (FP8_BYTES + SCALE_BYTES_PER_ELEMENT[recipe]), 1 + (amax > 0)


def forward_casts(linear: FP8Linear, kernels: CastKernels, recipe: Recipe) -> CastCost:
    """The forward's casts of the linear's input."""
    if kernels == "transformer-engine":  # one cast-transpose: both copies (from FP8: its transposed copy only)
        moved, launched = _quantise(recipe, FP8_BYTES if linear.input_fp8 else BF16_BYTES, 1 if linear.input_fp8 else 2)
        return CastCost(input=moved, kernels=launched)
    if linear.input_fp8:
        return CastCost()
    moved, launched = _quantise(recipe, BF16_BYTES, 1)  # the row-wise copy, then its scales laid out for the GEMM
    return CastCost(input=moved, kernels=launched + 1)


def backward_casts(linear: FP8Linear, kernels: CastKernels, recipe: Recipe) -> CastCost:
    """The backward's casts: the output gradient (row-wise for the data gradient, column-wise for the weight
    gradient) and, with DeepSeek's kernels, the input's column-wise copy for the weight gradient."""
    gradient_source = FP8_BYTES if linear.gradient_fp8 else BF16_BYTES
    if kernels == "transformer-engine":
        moved, launched = _quantise(recipe, gradient_source, 1 if linear.gradient_fp8 else 2)
        return CastCost(gradient=moved, kernels=launched)
    column, column_kernels = _quantise(recipe, gradient_source, 1)
    gradient = CastCost(gradient=column, kernels=column_kernels)
    if not linear.gradient_fp8:  # the row-wise copy too, with its scale layout
        row, row_kernels = _quantise(recipe, BF16_BYTES, 1)
        gradient += CastCost(gradient=row, kernels=row_kernels + 1)
    moved, launched = _quantise(recipe, FP8_BYTES if linear.kept_fp8 else BF16_BYTES, 1)
    return gradient + CastCost(input=moved, kernels=launched)


def weight_casts_per_step(kernels: CastKernels, recipe: Recipe, weight_bytes: float) -> float:
    """Bytes per weight element of casting the weights to FP8 once a step (both copies with Transformer Engine,
    the row-wise one with DeepSeek's, whose transposes are per micro-batch)."""
    return _quantise(recipe, weight_bytes, 2 if kernels == "transformer-engine" else 1)[0]


def weight_transposes_per_micro_batch(kernels: CastKernels) -> float:
    """Bytes per weight element moved in every micro-batch: DeepSeek's FP8 weights transposed for the
    data-gradient GEMM (read and write an FP8 byte); none with Transformer Engine, whose copies last the step."""
    return 2 * FP8_BYTES if kernels == "deepseek" else 0.0


def kept_in_fp8_bytes() -> tuple[float, float]:
    """(forward, backward) bytes per element of an activation kept for the backward in FP8 that is not a GEMM
    operand (DeepSeek-V3's SwiGLU input, report 3.3.4): cast to FP8, cast back to bf16."""
    return BF16_BYTES + FP8_BYTES, FP8_BYTES + BF16_BYTES


def e5m6_bytes() -> tuple[float, float]:
    """(forward, backward) bytes per element of DeepSeek-V3's E5M6 copy of the attention output: cast, cast back."""
    return BF16_BYTES + E5M6_BYTES, E5M6_BYTES + BF16_BYTES
