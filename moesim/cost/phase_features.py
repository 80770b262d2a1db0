"""What the measured phase models are linear in: one rank's work in one MoE layer, and named features of it.

A measured profile (`moesim calibrate`) fits each phase of the MoE layer (router,
permute, experts, unpermute, shared experts, the block's backward) to a linear model
over named features of `PhaseWork`; the profile records the names with the
coefficients, so a model reads its coefficients by name (`CostModel.coefficients`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence


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
    "backward": (
        "experts backward seconds",
        "permute and unpermute forward seconds",
        "router and shared forward seconds",
        "1",
    ),
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


def host_phase_features(
    phase: str,
    tokens: float,
    hidden: int,
    experts: int,
    top_k: int,
    slots: Optional[float] = None,
    active_experts: int = 0,
    rows: float = 0.0,
    ffn_seconds: float = 0.0,
    backward_seconds: float = 0.0,
    other_seconds: float = 0.0,
) -> tuple[float, ...]:
    """The feature vector of `HOST_PHASE_FEATURES[phase]` for one layer on one rank (slots default: tokens x top_k)."""
    slots = tokens * top_k if slots is None else slots
    work = PhaseWork(
        tokens,
        hidden,
        experts,
        top_k,
        slots=slots,
        carried_rows=slots,
        sort_keys=tokens * top_k,
        active_experts=active_experts,
        rows=rows,
        ffn_seconds=ffn_seconds,
        backward_seconds=backward_seconds,
        other_seconds=other_seconds,
    )
    return feature_vector(HOST_PHASE_FEATURES[phase], work)


def router_fit_key(strategy: str, capacity_factor: Optional[float]) -> str:
    """The `phase_fit` key of a routing rule's router phase (expert choice always has a capacity)."""
    capped = capacity_factor is not None and strategy != "expert_choice"
    return f"router:{strategy}{'+capacity' if capped else ''}"


def phase_fit_entry(key: str, value: Any) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    phase = key.split(":")[0]
    names = tuple(value.get("features") or HOST_PHASE_FEATURES.get(phase, ()))
    coefficients = tuple(float(c) for c in value["coefficients"])
    unknown = [name for name in names if name not in FEATURES]
    if phase not in DEVICE_PHASE_FEATURES or unknown or len(coefficients) != len(names):
        raise ValueError(
            f"phase_fit '{key}' needs {len(names)} coefficients for {names}"
            + (f"; unknown features {unknown}" if unknown else "")
        )
    return key, names, coefficients
