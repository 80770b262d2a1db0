"""FP8 as a scenario chooses it: GEMM compute precision and the bytes each all-to-all sends."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.errors import MoesimError
from moesim.models.precision import Precision
from moesim.scenario import scenario_from_dict
from moesim.sim.device import cost_model_for
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate


def _scenario(gpu: str = "H800", **precision: str) -> dict:
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 2, "first_k_dense_layers": 1},
        # the datasheet link: a time in proportion to the bytes (NCCL's measured rate depends on the message size)
        "cluster": {"num_nodes": 1, "gpu": gpu, "scale_up_collectives": "datasheet"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 8, "precision": precision},
    }


def test_fp8_tokens_carry_their_scales() -> None:
    # DeepSeek-V3 (report 3.3): fp8 dispatch with one fp32 scale per 128 elements, bf16 combine
    recipe = Precision(gemm="fp8", dispatch="fp8", combine="bf16")
    assert recipe.token_bytes(7168, "dispatch") == 7168 + 56 * 4
    assert recipe.token_bytes(7168, "combine") == 7168 * 2
    assert Precision().token_bytes(7168, "dispatch") == Precision().token_bytes(7168, "combine") == 14336


def test_the_fp8_recipe_speeds_up_gemms_and_halves_the_dispatch() -> None:
    bf16 = scenario_from_dict(_scenario())
    fp8 = scenario_from_dict(_scenario(gemm="fp8", dispatch="fp8", combine="bf16"))
    programs = []
    for scenario in (bf16, fp8):
        topology = Topology.from_cluster(scenario.cluster)
        routing, _ = route_layers(scenario, [0], 4096 * 8, 8)
        builder = PhaseBuilder(scenario, StagePlan(scenario), cost_model_for(scenario), topology, 4096, 4096)
        program = builder.stage_program(0, routing, 0)
        programs.append({phase.name: phase for phase in program.forward + program.backward if phase.layer == 1})
    experts_bf16, experts_fp8 = (float(np.max(p["experts"].seconds)) for p in programs)
    assert 1.2 < experts_bf16 / experts_fp8 < 2.0  # the measured grouped fp8 speedups of the H100 (H800: derived)
    dispatch_bf16, dispatch_fp8 = (float(p["dispatch"].seconds[0]) for p in programs)
    assert dispatch_fp8 / dispatch_bf16 == pytest.approx((7168 + 224) / 14336, rel=0.05)
    assert float(programs[1]["combine"].seconds[0]) == pytest.approx(float(programs[0]["combine"].seconds[0]), rel=1e-9)
    assert simulate(fp8).step_time_s < simulate(bf16).step_time_s
    assert "fp8_grouped" in simulate(fp8).sources["experts"]


def test_fp8_needs_fp8_tensor_cores_and_the_executor_runs_bf16() -> None:
    with pytest.raises(MoesimError, match="workload.precision.gemm: A100-80GB has no fp8"):
        scenario_from_dict(_scenario("A100-80GB", gemm="fp8"))
    from moesim.executor.launch import executor_dtype

    with pytest.raises(MoesimError, match="workload.precision.gemm"):
        executor_dtype(scenario_from_dict(_scenario(gemm="fp8")))


def test_fp8_weights_are_half_the_bytes_where_reading_them_bounds_the_gemm() -> None:
    """A decode step's experts (one row each on 32 of 128 experts, Qwen3-235B's shape on the H200) read their
    weights and little else: in fp8 half the bytes, so about twice as fast, where the measured table (from 128 rows
    a group up, compute-bound) would clamp to its smallest-rows speedup. From the table's fewest rows up, the
    table's own speedup stands."""
    from moesim.cost.loading import model_for_gpu
    from moesim.scenario.sections import ClusterSpec

    cost = model_for_gpu(ClusterSpec(gpu="H200").gpu)
    table = cost.fp8_grouped or cost.fp8_dense
    assert table is not None
    rows = np.array([1.0] * 32 + [0.0] * 96)
    bf16 = cost.experts_ffn_seconds(rows, 4096, 1536, True, 2, fp8=False, fused=True)
    fp8 = cost.experts_ffn_seconds(rows, 4096, 1536, True, 2, fp8=True, fused=True)
    clamped = table.speedup(1.0, 4096, 3072)
    assert bf16 / fp8 > clamped
    bytes_ratio = cost.grouped.seconds(rows, 4096, 3072, 2) / cost.grouped.seconds(rows, 4096, 3072, 1)
    assert 1.6 < bytes_ratio < 2.0  # the weights' bytes halve, the fixed costs stay
    fewest = table.fewest_rows(4096, 3072)
    many = np.full(32, fewest * 2)
    assert cost._grouped_fp8(many, 4096, 3072, True) == pytest.approx(table.speedup(fewest * 2, 4096, 3072))
