"""Experts in a 4-bit weight-only format (gpt-oss's MXFP4, NVFP4, Kimi-K2.5's int4): held and read at their size,
scales included, and computed in bf16 as W4A16 kernels do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.cost.loading import model_for_gpu
from moesim.errors import MoesimError
from moesim.models import accounting
from moesim.models.precision import WEIGHT_ONLY_BYTES, Precision
from moesim.scenario import scenario_from_dict
from moesim.scenario.sections import ClusterSpec
from moesim.sim.inference import InferencePass


def test_bytes_per_weight_count_the_scales() -> None:
    assert WEIGHT_ONLY_BYTES["mxfp4"] == 0.5 + 1 / 32  # an 8-bit exponent scale per 32
    assert WEIGHT_ONLY_BYTES["nvfp4"] == 0.5 + 1 / 16  # an fp8 scale per 16
    assert WEIGHT_ONLY_BYTES["int4"] == 0.5 + 2 / 32  # a bf16 scale per 32 (Kimi-K2.5's group size)
    assert Precision(expert_weights="mxfp4").expert_weight_bytes == pytest.approx(0.53125)
    assert Precision().expert_weight_bytes == 2


def _gpt_oss(expert_weights: str | None) -> dict:
    return {
        "model": str(Path(__file__).resolve().parent.parent / "models" / "hf" / "gpt-oss-120b.json"),
        "cluster": {"num_nodes": 1, "gpus_per_node": 1, "gpu": "H100-SXM"},
        "workload": {"mode": "inference", "precision": {"expert_weights": expert_weights}},
        "routing": {"capacity_factor": None},
    }


def test_memory_holds_the_experts_at_four_bits() -> None:
    """gpt-oss-120b on one H100 as released: 4-bit experts fit (its whole point), bf16 experts do not."""
    four = scenario_from_dict(_gpt_oss("mxfp4"))
    weights = InferencePass(four).memory().weights_bytes
    model = four.model
    experts = model.num_moe_layers * model.num_experts * accounting.expert_params(model)
    dense = accounting.total_params(model) - experts
    assert weights == pytest.approx(dense * 2 + experts * 0.53125, rel=0.01)
    assert weights < 80e9 < accounting.total_params(model) * 2


def test_a_decode_steps_experts_read_four_bit_weights() -> None:
    """A few rows per expert: the grouped GEMMs read the weights, so 4-bit ones take about a quarter of bf16's
    time (their fixed costs stay)."""
    cost = model_for_gpu(ClusterSpec(gpu="H100-SXM").gpu)
    rows = np.array([1.0] * 32 + [0.0] * 96)
    bf16 = cost.experts_ffn_seconds(rows, 2880, 2880, True, 2, fused=True)
    four = cost.experts_ffn_seconds(rows, 2880, 2880, True, 2, fused=True, weight_bytes=0.53125)
    assert 2.5 < bf16 / four < 2 / 0.53125


def test_training_refuses_a_weight_only_format() -> None:
    document = {**_gpt_oss("mxfp4"), "workload": {"mode": "training", "precision": {"expert_weights": "mxfp4"}}}
    with pytest.raises(MoesimError, match="workload.precision.expert_weights"):
        scenario_from_dict(document)
