"""Numeric formats and the training-precision recipe used by the memory accounting."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["fp32", "bf16", "fp16", "fp8"]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
"""Bytes per element of each numeric format."""

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

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weights]

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
