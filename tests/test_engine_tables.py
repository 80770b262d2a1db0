"""The engines' measured kernels (aiconfigurator's tables, `moesim.cost.engine_tables`): the rows read back as
measured, the version rule, and a serving deployment that names its engine all-reducing with the engine's kernels
(in a CUDA graph when it only decodes)."""

from __future__ import annotations

import math

import pytest

from moesim.cost.engine_tables import allreduce_seconds, decode_attention_seconds, source_commit, table_version
from moesim.scenario import scenario_from_dict
from moesim.serving.iteration import IterationCost


def test_measured_rows_read_back() -> None:
    """aiconfigurator's rows (H200, SGLang 0.5.9, 8 GPUs, 4,096 bf16 elements: 4.9002 us in a graph, 22.0083 us
    eager; H100, TensorRT-LLM 1.2.0rc5, 8,192 elements: 3.984 us)."""
    assert allreduce_seconds("H200", "sglang", "0.5.9", 8, 4096 * 2, graph=True) == pytest.approx(4.9002e-6)
    assert allreduce_seconds("H200", "sglang", "0.5.9", 8, 4096 * 2, graph=False) == pytest.approx(22.0083e-6)
    assert allreduce_seconds("H100-SXM", "trtllm", "1.2.0rc5", 8, 8192 * 2, graph=True) == pytest.approx(3.984e-6)
    assert len(source_commit()) == 40


def test_between_sizes_the_time_is_log_log_interpolated() -> None:
    between = allreduce_seconds("H200", "sglang", "0.5.9", 8, 6144 * 2, graph=True)
    assert between == pytest.approx(math.exp((math.log(4.9002e-6) + math.log(5.1555e-6)) / 2), rel=0.01)


def test_the_newest_measured_version_not_newer_is_read() -> None:
    assert table_version("H200", "sglang", "0.5.9") == "0.5.9"
    assert table_version("H200", "sglang", "0.5.8.post1") == "0.5.6.post2"
    assert table_version("H200", "sglang", "0.5.1.post1") == "0.5.6.post2"  # older than all: the oldest
    assert table_version("H200", "trtllm", None) == "1.2.0rc5"
    assert table_version("H200", "trtllm", "gpt-oss-dev") == "1.2.0rc5"  # not a version number
    assert table_version("A100-80GB", "vllm", "0.14.0") is None  # no table for the GPU


def _tp8(engine: str | None) -> dict:
    return {
        "model": {"preset": "mixtral-8x7b", "num_layers": 4},
        "cluster": {"num_nodes": 1, "gpu": "H200"},
        "parallelism": {"tp_size": 8, "ep_size": 8},
        "workload": {"mode": "inference"},
        "simulation": {"network_mode": "fast", "moe_kernels": "fused"},
        "serving": {"engine": engine, "engine_version": "0.5.9"},
    }


def test_an_engine_all_reduces_with_its_own_kernels() -> None:
    """TP 8: per layer two all-reduces of the batch's activations (after attention, after the MoE block); with
    SGLang named, its graph-replayed kernel at 2 tokens (2 x 4,096 elements: 5.1555 us, its 8,192 row) instead of
    a ring of NCCL latencies; prefill iterations launch eagerly."""
    plain, engine = (IterationCost(scenario_from_dict(_tp8(name))) for name in (None, "sglang"))
    decode = [cost.breakdown(0, 0.0, 2, 512.0)["tp_allreduce"] for cost in (plain, engine)]
    layers_allreduces = 2 * 4
    assert decode[1] == pytest.approx(layers_allreduces * 5.1555e-6, rel=1e-6)
    assert decode[1] < decode[0] / 2
    prefill = engine.breakdown(2048, 1024.0, 0, 0.0)["tp_allreduce"]
    eager = allreduce_seconds("H200", "sglang", "0.5.9", 8, 2048 * 4096 * 2, graph=False)
    assert prefill == pytest.approx(layers_allreduces * eager, rel=1e-6)


def test_decode_attention_reads_the_engines_measured_kernel() -> None:
    """SGLang 0.5.9 on the H200, 16 heads and 1 KV head of 128 a GPU (Qwen3-235B at TP 4), 8 sequences of 1,023
    cached tokens: 16.101 us measured; between measured batches and contexts, log-log; a layout the table lacks
    (none of the engines measured 3 KV heads a GPU) leaves moesim's model to it."""
    assert decode_attention_seconds("H200", "sglang", "0.5.9", "gqa", 16, 1, 128, 8, 1023) == pytest.approx(16.101e-6)
    low = decode_attention_seconds("H200", "sglang", "0.5.9", "gqa", 16, 1, 128, 4, 1023)
    high = decode_attention_seconds("H200", "sglang", "0.5.9", "gqa", 16, 1, 128, 8, 1023)
    middle = decode_attention_seconds("H200", "sglang", "0.5.9", "gqa", 16, 1, 128, math.sqrt(32), 1023)
    assert middle == pytest.approx(math.sqrt(low * high))
    assert decode_attention_seconds("H200", "sglang", "0.5.9", "gqa", 16, 3, 128, 8, 1023) is None


def test_serve_says_which_engine_it_models() -> None:
    from moesim.cost.engine_tables import engine_words

    assert "none named" in engine_words("H200", None, None)
    named = engine_words("H200", "sglang", "0.5.8")
    assert "SGLang 0.5.8" in named and "SGLang 0.5.6.post2 on the H200" in named and "moesim's own" in named
    assert "no measured tables" in engine_words("A100-80GB", "vllm", "0.14.0")


def test_the_quoted_run_errors_are_the_committed_held_out_tables() -> None:
    """`moesim serve` quotes the held-out errors of whole runs: they are validation/SERVING_MEASURED.md's."""
    from pathlib import Path

    from moesim.serving.checked import MEASURED_RUNS_CHECK, runs_words

    page = (Path(__file__).resolve().parent.parent / "validation" / "SERVING_MEASURED.md").read_text()
    assert "held_out part" in page
    single = page[page.index("single-node runs") :]
    cells = next(line for line in single.splitlines() if line.startswith("all")).split()
    runs, tpot50, tpot90, _, ttft50, ttft90 = cells[1:7]
    check = MEASURED_RUNS_CHECK
    assert int(runs) == check.runs
    assert [float(v.rstrip("%")) / 100 for v in (tpot50, tpot90, ttft50, ttft90)] == [
        check.tpot_median, check.tpot_p90, check.ttft_median, check.ttft_p90
    ]  # fmt: skip
    assert "152 held-out" in runs_words("H200", "vllm") and runs_words("H200", None) == ""


def test_naming_an_engine_runs_its_fused_moe_kernels() -> None:
    """The executor's eager MoE bookkeeping is moesim's own PyTorch executor's: a scenario that names its engine
    gets the engines' fused kernels, unless it sets simulation.moe_kernels itself."""
    base = {"model": "mixtral-8x7b", "workload": {"mode": "inference"}}
    assert scenario_from_dict(base).simulation.moe_kernels == "eager"
    assert scenario_from_dict({**base, "serving": {"engine": "vllm"}}).simulation.moe_kernels == "fused"
    kept = {**base, "serving": {"engine": "vllm"}, "simulation": {"moe_kernels": "eager"}}
    assert scenario_from_dict(kept).simulation.moe_kernels == "eager"
