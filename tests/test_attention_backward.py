"""FlashAttention's backward: 2.5x the forward's FLOPs at its measured, lower rate (FlashAttention-3's paper)."""

from __future__ import annotations

import pytest

from moesim.cluster.hardware import gpu_preset
from moesim.cluster.topology import Topology
from moesim.cost import model_for_gpu
from moesim.cost.attention_backward import backward_slowdown
from moesim.scenario import scenario_from_dict
from moesim.sim.phase import BACKWARD_ATTENTION_FACTOR
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan


def test_the_measured_rates_read_back_and_hold_at_the_ends() -> None:
    # FlashAttention-2 on an H100 SXM5, head dim 128: forward 368, backward 310 TFLOP/s at 4,096 tokens
    assert backward_slowdown(4096) == pytest.approx(368 / 310)
    assert backward_slowdown(512) == pytest.approx(309 / 214)
    assert backward_slowdown(64) == backward_slowdown(512)  # held below the shortest measured sequence
    assert backward_slowdown(131072) == pytest.approx(370 / 322)  # and above the longest
    assert backward_slowdown(512) > backward_slowdown(2048) > backward_slowdown(16384) > 1.0


def test_a_layers_attention_backward_is_the_flops_at_that_rate() -> None:
    scenario = scenario_from_dict(
        {
            "model": {"preset": "mixtral-8x7b", "num_layers": 1},
            "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
            "parallelism": {"ep_size": 8},
            "workload": {"mode": "training", "seq_len": 4096},
        }
    )
    plan = StagePlan(scenario)
    cost = model_for_gpu(gpu_preset("H100-SXM"))
    builder = PhaseBuilder(scenario, plan, cost, Topology.from_cluster(scenario.cluster), plan.tokens_per_rank, 4096)
    parts = builder.attention_parts(plan.layers[0])
    assert parts["scores_backward"] == pytest.approx(BACKWARD_ATTENTION_FACTOR * parts["scores"] * 368 / 310)


def test_the_norms_inside_an_attention_are_memory_passes_of_what_they_normalise() -> None:
    """Qwen3's per-head RMSNorm on its queries and keys; MLA's on its two latents (DeepSeek-V3: 1,536 + 512 a
    token): each one pass read and written over the attended tokens, none without either."""
    cost = model_for_gpu(gpu_preset("H100-SXM"))
    for preset, widths in (("qwen3-30b-a3b", (32 * 128, 4 * 128)), ("deepseek-v3", (1536, 512)), ("mixtral-8x7b", ())):
        scenario = scenario_from_dict(
            {
                "model": {"preset": preset, "num_layers": 1, "first_k_dense_layers": 0},
                "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
                "parallelism": {"ep_size": 8},
                "workload": {"mode": "training", "seq_len": 4096},
            }
        )
        plan = StagePlan(scenario)
        builder = PhaseBuilder(
            scenario, plan, cost, Topology.from_cluster(scenario.cluster), plan.tokens_per_rank, 4096
        )
        expected = sum(cost.memory_seconds(2 * builder.gemm_tokens * width * 2) for width in widths)
        assert builder.attention_parts(plan.layers[0])["head_norms"] == pytest.approx(expected)


def test_rope_is_a_pass_over_the_rotated_queries_and_keys_in_training_only() -> None:
    """GQA: every query and key head a rank holds; MLA: the decoupled rotary part (64 of DeepSeek-V3's 192 per
    head) of 128 query heads and one shared key; none for T5-style Switch, none when serving (engines fuse it with
    the KV-cache write)."""
    cost = model_for_gpu(gpu_preset("H100-SXM"))
    cases = (
        ("qwen3-30b-a3b", "training", (32 + 4) * 128),
        ("deepseek-v3", "training", (128 + 1) * 64),
        ("switch-base-8", "training", 0),
        ("qwen3-30b-a3b", "inference", 0),
    )
    for preset, mode, width in cases:
        scenario = scenario_from_dict(
            {
                "model": {"preset": preset, "num_layers": 2, "first_k_dense_layers": 0}
                if preset != "switch-base-8"
                else "switch-base-8",
                "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
                "parallelism": {"ep_size": 8},
                "workload": {"mode": mode, "seq_len": 512},
            }
        )
        plan = StagePlan(scenario)
        builder = PhaseBuilder(scenario, plan, cost, Topology.from_cluster(scenario.cluster), plan.tokens_per_rank, 512)
        expected = cost.memory_seconds(2 * builder.gemm_tokens * width * 2) if width else 0.0
        assert builder.attention_parts(plan.layers[-1])["rope"] == pytest.approx(expected), preset
