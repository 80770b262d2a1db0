"""The KV cache each serving engine allocates at its defaults (`moesim.serving.engine_memory`): SGLang's reserve
rule recomputed by hand from its server_args, vLLM's and TensorRT-LLM's 0.9 fractions, and moesim's own room where
no engine is named."""

from __future__ import annotations

import pytest

from moesim.scenario import scenario_from_dict
from moesim.serving.engine_memory import engine_kv_room_bytes, sglang_reserved_bytes
from moesim.serving.iteration import IterationCost
from moesim.sim.inference import InferencePass

MIB = 2**20


def _deepseek(engine: str | None, **parallelism: int) -> dict:
    return {
        "model": {"preset": "deepseek-v3"},
        "cluster": {"num_nodes": 1, "gpu": "H200"},
        "parallelism": {"tp_size": 8, "expert_tp_size": 8, "ep_size": 1, **parallelism},
        "workload": {"mode": "inference", "precision": {"weights": "fp8", "gemm": "fp8"}},
        "simulation": {"network_mode": "fast", "moe_kernels": "fused"},
        "serving": {"input_tokens": 1024, "output_tokens": 1024, "concurrency": 16, "engine": engine},
    }


def test_sglang_reserves_by_its_own_rule() -> None:
    scenario = scenario_from_dict(_deepseek("sglang"))
    capacity = InferencePass(scenario).memory().capacity_bytes
    # server_args on an H200 at TP 8: 512 + 1.5 x 8192 (chunked prefill) + 2 x 512 (CUDA graphs) + 1024 x 8 / 8
    assert sglang_reserved_bytes(scenario, capacity) == pytest.approx((512 + 12288 + 1024 + 1024) * MIB)
    drafting = scenario_from_dict(_deepseek("sglang"), ["serving.speculative_tokens=1"])
    assert sglang_reserved_bytes(drafting, capacity) == pytest.approx((512 + 12288 + 1024 + 1024 + 2048) * MIB)
    # data-parallel attention over the 8 GPUs: 3 x 512 graphs x 8 ranks, and half that again past 300 graphs;
    # the server's chunked prefill is the 8 ranks' budgets
    dp = scenario_from_dict(_deepseek("sglang", tp_size=1, expert_tp_size=1, ep_size=8))
    expected = 512 + 1.5 * 8 * 8192 + 1024 + 1024 + 512 * 8 * 3 + 512 * 8 * 1.5
    assert sglang_reserved_bytes(dp, capacity) == pytest.approx(expected * MIB)
    # a small server still keeps 10 GiB on a GPU over 60 GiB
    small = scenario_from_dict(_deepseek("sglang", tp_size=1, expert_tp_size=1), ["serving.token_budget=2048"])
    assert sglang_reserved_bytes(small, capacity) == pytest.approx(10 * 1024 * MIB)


def test_each_engine_keeps_its_share_back() -> None:
    rooms = {}
    for engine in (None, "sglang", "vllm", "trtllm"):
        scenario = scenario_from_dict(_deepseek(engine))
        memory = InferencePass(scenario).memory()
        rooms[engine] = engine_kv_room_bytes(scenario, memory)
    own = memory.kv_room_bytes
    assert rooms[None] == own
    assert rooms["trtllm"] == pytest.approx(0.9 * own)
    assert rooms["vllm"] == pytest.approx(own - 0.1 * memory.capacity_bytes)
    sglang = memory.capacity_bytes - memory.weights_bytes - memory.alltoall_buffer_bytes - 14848 * MIB
    assert rooms["sglang"] == pytest.approx(sglang)
    assert max(rooms["sglang"], rooms["vllm"], rooms["trtllm"]) < own


def test_an_engines_kv_cache_holds_fewer_tokens() -> None:
    own = IterationCost(scenario_from_dict(_deepseek(None))).kv_capacity_tokens()
    vllm = IterationCost(scenario_from_dict(_deepseek("vllm"))).kv_capacity_tokens()
    assert 0 < vllm < own
