"""FP8 training's casts (`moesim.sim.fp8_casts`, `moesim.cost.fp8_recipes`): each FP8 linear's input and output
gradient quantised as the stack's kernels do it, counted in closed form, in training only, and shown as a phase of
its own; DeepSeek's kernels pinned to the passes its training profile shows."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.cost.fp8_recipes import FP8Linear, backward_casts, forward_casts, weight_casts_per_step
from moesim.scenario import load_scenario, scenario_from_dict
from moesim.sim.device import cost_model_for
from moesim.sim.fp8_casts import _weight_elements, attention_gemms, cast_phases, ffn_gemms
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate

BLOCK_SCALE = 4 / 128  # an fp32 scale per 128 elements


def _document(gemm: str = "fp8", mode: str = "training", tp: int = 1, **precision: str) -> dict:
    return {
        "model": {"preset": "qwen3-30b-a3b", "num_layers": 2},
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8, "tp_size": tp},
        "workload": {
            "mode": mode,
            "seq_len": 4096,
            "global_batch_size": 8,
            "precision": {"gemm": gemm, **precision},
        },
        "routing": {"strategy": "balanced", "capacity_factor": None},
        "simulation": {"network_mode": "fast"},
    }


def _casts(document: dict) -> tuple[PhaseBuilder, tuple, list[np.ndarray]]:
    scenario = scenario_from_dict(document)
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    tokens = plan.tokens_per_rank
    routing, _ = route_layers(scenario, [0, 1], tokens * scenario.parallelism.ep_size, topology.gpus_per_node)
    builder = PhaseBuilder(scenario, plan, cost_model_for(scenario), topology, tokens, scenario.workload.seq_len)
    return builder, cast_phases(builder, plan.layers[0], routing[0].rank_rows), routing[0].rank_rows


def test_transformer_engine_reads_each_tensor_once_and_writes_both_copies() -> None:
    """Transformer Engine's fused cast-transpose: 2 bytes read, an FP8 byte written for each copy (row-wise and
    column-wise), plus the recipe's scales; tensorwise (current) scaling reads the tensor once more for its amax."""
    plain = FP8Linear(1024, 4096)
    assert forward_casts(plain, "transformer-engine", "delayed").input == 4.0
    assert forward_casts(plain, "transformer-engine", "blockwise").input == pytest.approx(2 + 2 * (1 + BLOCK_SCALE))
    assert forward_casts(plain, "transformer-engine", "mxfp8").input == pytest.approx(2 + 2 * (1 + 1 / 32))
    current = forward_casts(plain, "transformer-engine", "tensorwise")
    assert (current.input, current.kernels) == (6.0, 2)  # the amax pass, then the cast
    backward = backward_casts(plain, "transformer-engine", "delayed")
    assert (backward.input, backward.gradient, backward.kernels) == (0.0, 4.0, 1)  # the input's copy was kept
    dispatched = forward_casts(FP8Linear(1024, 4096, input_fp8=True), "transformer-engine", "delayed")
    assert dispatched.input == 2.0  # only the transposed copy of the FP8 tokens
    assert weight_casts_per_step("transformer-engine", "delayed", 2) == 4.0


def test_deepseek_kernels_make_each_copy_in_its_own_pass_as_its_profile_shows() -> None:
    """DeepSeek's profile (train.json), a routed expert's linears in one MoE layer's backward: the SwiGLU input's
    gradient cast per token and per channel (two passes), the recomputed SwiGLU output per channel (from bf16), the
    output gradient and the dispatched input per channel straight from their FP8 copies; the forward casts nothing
    (tokens dispatched in FP8, the SwiGLU kernel writes FP8)."""
    hidden, inner, recipe = 7168, 2048, "blockwise"
    quant = 1 + BLOCK_SCALE
    up = FP8Linear(hidden, 2 * inner, input_fp8=True, kept_fp8=True)
    down = FP8Linear(inner, hidden, input_fp8=True, gradient_fp8=True)  # its input recomputed: bf16 again
    assert forward_casts(up, "deepseek", recipe).input == 0 and forward_casts(down, "deepseek", recipe).input == 0
    up_back, down_back = backward_casts(up, "deepseek", recipe), backward_casts(down, "deepseek", recipe)
    assert up_back.gradient == pytest.approx(2 * (2 + quant))  # per_token_cast + per_channel_cast_and_transpose
    assert up_back.input == pytest.approx(1 + quant)  # per_channel_cast_and_transpose of the FP8 tokens
    assert down_back.gradient == pytest.approx(1 + quant)  # the FP8 gradient the combine's backward brought
    assert down_back.input == pytest.approx(2 + quant)  # the recomputed SwiGLU output's per-channel copy
    kept = backward_casts(
        FP8Linear(inner, hidden, input_fp8=True, gradient_fp8=True, kept_fp8=True), "deepseek", recipe
    )
    assert kept.input == pytest.approx(1 + quant)  # not recomputed: made from the FP8 copy the SwiGLU wrote
    # a bf16 input's forward: the per-token cast and the kernel that lays its scales out for the GEMM
    attention = forward_casts(FP8Linear(hidden, 1536), "deepseek", recipe)
    assert (attention.input, attention.kernels) == (pytest.approx(2 + quant), 2)


def test_a_layers_casts_with_transformer_engine_in_closed_form() -> None:
    """Qwen3-30B-A3B (hidden 2,048, 32 x 128 query heads, 4 KV heads, top-8 of 128 experts of 768) at TP 1: a rank's
    4,096 tokens cast the QKV input (2,048 wide) and the output projection's (4,096), every routed row the experts'
    up input (2,048) and down input (768), each into both copies; the gradients the other way round; the weights
    once a step, spread over the step's micro-batches."""
    builder, casts, rank_rows = _casts(_document())
    assert casts is not None
    tokens, per_element = 4096, 2 + 2 * (1 + BLOCK_SCALE)
    rows = np.array([float(np.sum(rank)) for rank in rank_rows])
    assert rows.mean() == pytest.approx(tokens * 8)  # forced balance: every rank its share of the top-8 copies
    weights = 2048 * 5120 + 4096 * 2048 + (128 // 8) * (2048 * 1536 + 768 * 2048)
    assert _weight_elements(builder, builder.plan.layers[0]) == weights
    forward = per_element * (tokens * (2048 + 4096) + rows * (2048 + 768) + weights / builder.plan.micro_batches)
    backward = per_element * (tokens * (5120 + 2048) + rows * (1536 + 2048))
    cost = builder.cost
    bandwidth = cost.memory_bytes_per_s * cost.memory_efficiency
    launches = 4 * cost.kernel_launch_s  # two attention projections, two expert projections
    assert np.allclose(casts[0].seconds, forward / bandwidth + launches)
    assert np.allclose(casts[1].seconds, backward / bandwidth + launches)
    assert attention_gemms(builder.model, 1) == [(2048, 4096 + 2 * 4 * 128, "column"), (4096, 2048, "row")]
    assert ffn_gemms(2048, 768, "swiglu") == [(2048, 1536, "column"), (768, 2048, "row")]


def test_tensor_parallel_casts_take_each_tensor_where_it_is_split() -> None:
    """At TP 2 the hidden-wide tensors are cast on the rank's sequence share, the head-split ones on the gathered
    sequence at half the width: the attention's activation casts stay what TP 1 casts, halved."""
    (one, cast_one, rows_one), (two, cast_two, rows_two) = _casts(_document(tp=1)), _casts(_document(tp=2))
    assert (one.tokens, one.gemm_tokens, two.tokens, two.gemm_tokens) == (4096, 4096, 2048, 4096)
    bandwidth = one.cost.memory_bytes_per_s * one.cost.memory_efficiency
    per_element = 2 + 2 * (1 + BLOCK_SCALE)

    def attention(builder: PhaseBuilder, casts: tuple, rows: list[np.ndarray]) -> float:
        experts = per_element * float(rows[0].sum()) * (2048 + 768)
        weights = per_element * _weight_elements(builder, builder.plan.layers[0]) / builder.plan.micro_batches
        return float(casts[0].seconds[0]) - (experts + weights) / bandwidth - 4 * builder.cost.kernel_launch_s

    assert attention(two, cast_two, rows_two) == pytest.approx(attention(one, cast_one, rows_one) / 2, rel=1e-9)


def test_deepseek_v3s_stack_casts_more_than_transformer_engine_would() -> None:
    """The shipped DeepSeek-V3 scenario names DeepSeek's stack, whose cast kernels it runs; the same layer with
    Transformer Engine's fused cast-transpose moves fewer bytes (no separate passes, no per-micro-batch weight
    transposes, nothing kept in FP8 and cast back)."""
    scenario = load_scenario("scenarios/deepseek-v3-pretraining.yaml")
    assert scenario.workload.precision.fp8_cast_kernels == "deepseek"
    assert scenario.workload.precision.fp8_recipe == "blockwise"
    document = scenario.model_dump(mode="json")
    document["stack"] = {"name": None}
    document["workload"]["precision"]["fp8_cast_kernels"] = "transformer-engine"
    document["simulation"]["network_mode"] = "fast"
    engine = simulate(scenario_from_dict(document), check_memory=False).phase_seconds["fp8_casts"]
    document["workload"]["precision"]["fp8_cast_kernels"] = "deepseek"
    deepseek = simulate(scenario_from_dict(document), check_memory=False).phase_seconds["fp8_casts"]
    assert deepseek > 1.3 * engine


def test_no_casts_in_bf16_or_in_serving_and_a_phase_of_their_own_in_fp8_training() -> None:
    assert _casts(_document(gemm="bf16"))[1] is None
    assert _casts(_document(mode="inference"))[1] is None
    fp8 = simulate(scenario_from_dict(_document()), check_memory=False)
    assert fp8.phase_seconds["fp8_casts"] > 0
    assert "fp8_casts: derived: the bytes" in fp8.sources["fp8_casts"]
    assert "fp8_casts" not in simulate(scenario_from_dict(_document(gemm="bf16")), check_memory=False).phase_seconds
