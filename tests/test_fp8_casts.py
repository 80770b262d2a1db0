"""FP8 training's casts (`moesim.sim.fp8_casts`): each FP8 GEMM's input and output gradient cast with its
transpose, counted in closed form, in training only, and shown as a phase of its own."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.scenario import scenario_from_dict
from moesim.sim.device import cost_model_for
from moesim.sim.fp8_casts import CAST_BYTES_PER_ELEMENT, attention_gemms, cast_phases, ffn_gemms
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate


def _document(gemm: str = "fp8", mode: str = "training", tp: int = 1) -> dict:
    return {
        "model": {"preset": "qwen3-30b-a3b", "num_layers": 2},
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8, "tp_size": tp},
        "workload": {"mode": mode, "seq_len": 4096, "global_batch_size": 8, "precision": {"gemm": gemm}},
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


def test_a_layers_casts_are_its_fp8_gemms_inputs_and_gradients_at_the_copy_bandwidth() -> None:
    """Qwen3-30B-A3B (hidden 2,048, 32 x 128 query heads, 4 KV heads, top-8 of 128 experts of 768): at TP 1 a rank's
    4,096 tokens cast the QKV input (2,048 wide) and the output projection's (4,096), and every routed row the
    experts' up input (2,048) and down input (768); the gradients the other way round."""
    builder, casts, rank_rows = _casts(_document())
    assert casts is not None
    tokens = 4096
    rows = np.array([float(np.sum(rank)) for rank in rank_rows])
    assert rows.mean() == pytest.approx(tokens * 8)  # forced balance: every rank its share of the top-8 copies
    forward = CAST_BYTES_PER_ELEMENT * (tokens * (2048 + 4096) + rows * (2048 + 768))
    backward = CAST_BYTES_PER_ELEMENT * (tokens * (4096 + 1024 + 2048) + rows * (1536 + 2048))
    cost = builder.cost
    bandwidth = cost.memory_bytes_per_s * cost.memory_efficiency
    launches = 4 * cost.kernel_launch_s  # two attention projections, two expert projections
    assert np.allclose(casts[0].seconds, forward / bandwidth + launches)
    assert np.allclose(casts[1].seconds, backward / bandwidth + launches)
    assert attention_gemms(builder.model, 1) == [(2048, 4096 + 2 * 4 * 128, "column"), (4096, 2048, "row")]
    assert ffn_gemms(2048, 768, "swiglu") == [(2048, 1536, "column"), (768, 2048, "row")]


def test_tensor_parallel_casts_take_each_tensor_where_it_is_split() -> None:
    """At TP 2 the hidden-wide tensors are cast on the rank's sequence share, the head-split ones on the gathered
    sequence at half the width: the attention's casts stay what TP 1 casts, halved."""
    (one, cast_one, rows_one), (two, cast_two, rows_two) = _casts(_document(tp=1)), _casts(_document(tp=2))
    assert (one.tokens, one.gemm_tokens, two.tokens, two.gemm_tokens) == (4096, 4096, 2048, 4096)
    bandwidth = one.cost.memory_bytes_per_s * one.cost.memory_efficiency
    # the experts' casts on rank 0's routed rows (forced balance: about 8 copies a token, half the tokens at TP 2)
    experts_one = CAST_BYTES_PER_ELEMENT * float(rows_one[0].sum()) * (2048 + 768) / bandwidth
    experts_two = CAST_BYTES_PER_ELEMENT * float(rows_two[0].sum()) * (2048 + 768) / bandwidth
    attention_one = float(cast_one[0].seconds[0]) - experts_one - 4 * one.cost.kernel_launch_s
    attention_two = float(cast_two[0].seconds[0]) - experts_two - 4 * two.cost.kernel_launch_s
    assert attention_two == pytest.approx(attention_one / 2, rel=1e-9)


def test_no_casts_in_bf16_or_in_serving_and_a_phase_of_their_own_in_fp8_training() -> None:
    assert _casts(_document(gemm="bf16"))[1] is None
    assert _casts(_document(mode="inference"))[1] is None
    fp8 = simulate(scenario_from_dict(_document()), check_memory=False)
    assert fp8.phase_seconds["fp8_casts"] > 0
    assert "fp8_casts: derived: the bytes" in fp8.sources["fp8_casts"]
    assert "fp8_casts" not in simulate(scenario_from_dict(_document(gemm="bf16")), check_memory=False).phase_seconds
