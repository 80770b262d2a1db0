"""Numeric formats and the training-precision recipe used by the memory accounting."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["fp32", "bf16", "fp16", "fp8"]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
"""Bytes per element of each numeric format."""

FP8_SCALE_BLOCK = 128
"""Elements sharing one fp32 scale in fine-grained fp8 (DeepSeek-V3 technical report, section 3.3.2)."""

WEIGHT_ONLY_BYTES: dict[str, float] = {"mxfp4": 0.5 + 1 / 32, "nvfp4": 0.5 + 1 / 16, "int4": 0.5 + 2 / 32}
"""Bytes per weight of the 4-bit weight-only formats, scales included: MXFP4 (OCP microscaling: an 8-bit scale per
32 weights, as gpt-oss is released), NVFP4 (an fp8 scale per 16) and int4 with a bf16 scale per 32 (Kimi-K2.5's
released experts: compressed-tensors, group size 32, its config.json)."""

OPTIMIZER_STATES_PER_PARAM: dict[str, int] = {"adam": 2, "sgd_momentum": 1, "sgd": 0}
"""Optimizer state tensors kept per parameter (Adam: first and second moment)."""


class Precision(BaseModel):
    """How weights, gradients and optimizer states are stored during training.

    The default is the mixed-precision recipe of the ZeRO paper (Rajbhandari et al. 2020)
    and Megatron-LM: bf16 weights and gradients, an fp32 master copy, fp32 Adam moments,
    i.e. 2 + 2 + 12 = 16 bytes per parameter.
    """

    model_config = ConfigDict(extra="forbid")

    weights: DType = Field("bf16", description="Format of the weights used in the forward/backward pass.")
    grads: DType = Field("bf16", description="Format of the gradients.")
    master_weights: DType | None = Field(
        "fp32", description="Format of the optimizer's master copy of the weights; null = none (pure low precision)."
    )
    optimizer: Literal["adam", "sgd_momentum", "sgd"] = Field("adam", description="Optimizer (sets the state count).")
    optimizer_state: DType = Field("fp32", description="Format of optimizer states (Adam moments).")
    activations: DType = Field("bf16", description="Format of stored activations and the KV cache.")
    gemm: Literal["bf16", "fp8"] = Field(
        "bf16",
        description="Compute precision of the linear layers' GEMMs, forward and backward (fp8: e4m3 with "
        "fine-grained scales, DeepSeek-V3's recipe; the router, embedding and output head stay bf16).",
    )
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = Field(
        "blockwise",
        description="FP8 training's scaling recipe (Megatron-LM's --fp8-recipe): delayed (the amax inside the cast, "
        "the scale from its history), tensorwise (current scaling: an amax pass before each cast), blockwise "
        "(DeepSeek-V3's 1x128 / 128x128 scales), mxfp8 (a scale per 32); it sets the casts' passes and scale bytes "
        "(`moesim.cost.fp8_recipes`); the GEMMs are timed from DeepGEMM's blockwise tables whichever it is.",
    )
    fp8_cast_kernels: Literal["transformer-engine", "deepseek"] = Field(
        "transformer-engine",
        description="Whose kernels make FP8 training's operands: transformer-engine (a fused cast-transpose writes "
        "both copies of a tensor, weights cast once a step) or deepseek (DeepSeek-V3's: row-wise and column-wise "
        "casts in separate passes, FP8 weights transposed every micro-batch, the SwiGLU input kept in FP8 and the "
        "attention output in E5M6 where linear_inputs is fp8).",
    )
    expert_weights: Optional[Literal["mxfp4", "nvfp4", "int4"]] = Field(
        None,
        description="Inference: the routed experts' weights in a 4-bit weight-only format, read at that size (scales "
        "included) and computed in bf16 as W4A16 kernels do (Marlin, Triton); null: `weights`.",
    )
    dispatch: Optional[DType] = Field(
        None, description="Format of the tokens sent to the experts (null: the activations'; DeepSeek-V3: fp8)."
    )
    combine: Optional[DType] = Field(
        None, description="Format of the expert outputs sent back (null: the activations'; DeepSeek-V3: bf16)."
    )
    linear_inputs: Optional[DType] = Field(
        None,
        description="Format in which the linear layers' inputs are kept for the backward (null: the activations'; "
        "DeepSeek-V3 caches them in fp8, report 3.3.4).",
    )

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weights]

    @property
    def expert_weight_bytes(self) -> float:
        """Bytes per routed-expert weight: the 4-bit format's where one is set, else `weight_bytes`."""
        return WEIGHT_ONLY_BYTES[self.expert_weights] if self.expert_weights else self.weight_bytes

    @property
    def grad_bytes(self) -> int:
        return DTYPE_BYTES[self.grads]

    @property
    def optimizer_bytes_per_param(self) -> int:
        """Master copy plus optimizer states, bytes per parameter."""
        master = DTYPE_BYTES[self.master_weights] if self.master_weights else 0
        return master + OPTIMIZER_STATES_PER_PARAM[self.optimizer] * DTYPE_BYTES[self.optimizer_state]

    @property
    def activation_bytes(self) -> int:
        return DTYPE_BYTES[self.activations]

    @property
    def linear_input_bytes(self) -> float:
        """Bytes per kept element of a linear layer's input (fp8 with one fp32 scale per 128 elements)."""
        dtype = self.linear_inputs or self.activations
        return DTYPE_BYTES[dtype] + (4 / FP8_SCALE_BLOCK if dtype == "fp8" else 0.0)

    def token_bytes(self, hidden: int, direction: str) -> float:
        """Bytes of one token's hidden vector sent in an all-to-all ('dispatch' or 'combine'): fp8 carries one fp32
        scale per 128 elements beside the values (DeepSeek-V3's fine-grained quantisation, DeepEP's fp8 dispatch)."""
        dtype = (self.dispatch if direction == "dispatch" else self.combine) or self.activations
        return hidden * DTYPE_BYTES[dtype] + (4 * -(-hidden // FP8_SCALE_BLOCK) if dtype == "fp8" else 0)
