"""Model architectures (`ModelSpec`), published presets and their accounting."""

from moesim.models.accounting import (
    activation_bytes_per_token,
    active_params,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
    summarize,
    total_params,
    training_flops_per_token,
    training_state_bytes,
)
from moesim.models.precision import Precision
from moesim.models.presets import PUBLISHED, model_preset, model_preset_names
from moesim.models.spec import ModelSpec

__all__ = [
    "ModelSpec",
    "Precision",
    "PUBLISHED",
    "model_preset",
    "model_preset_names",
    "total_params",
    "active_params",
    "forward_flops_per_token",
    "training_flops_per_token",
    "training_state_bytes",
    "activation_bytes_per_token",
    "kv_cache_bytes_per_token",
    "summarize",
]
