"""Every shipped scenario loads, fits in memory at its stated deployment, and simulates (in fast mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim import load_scenario, simulate

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.*"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.name for path in SCENARIOS])
def test_scenario_runs(path: Path) -> None:
    scenario = load_scenario(
        path, ["simulation.network_mode=fast", "simulation.max_routed_tokens=4096", "simulation.bias_warmup_steps=5"]
    )
    assert scenario.description, "every scenario says what question it answers"
    result = simulate(scenario)  # memory is checked: the deployment as written must fit
    assert result.step_time_s > 0 and 0 < result.mfu < 1
    assert result.memory["total_bytes"] <= result.memory["capacity_bytes"]
    for point in scenario.sweep.params:
        assert point.split(".")[0] in type(scenario).model_fields


def test_published_comparison_table_is_what_the_code_predicts() -> None:
    from moesim.validation.published import REPO, published_table

    table = published_table()
    assert table == (REPO / "validation" / "PUBLISHED.md").read_text(), (
        "regenerate: python -m moesim.validation.published"
    )
    row = next(line for line in table.splitlines() if line.startswith("| deepseek-v3-pretraining"))
    published, predicted, ratio = (cell.strip() for cell in row.split("|")[2:5])
    assert published == "180K GPU-h per 10^12 tokens"
    assert float(ratio.split()[0]) == pytest.approx(float(predicted.split("K")[0].replace(",", "")) / 180, abs=0.01)
    # serving: MLPerf's four figures within the serving bar (20%); DeepSeek's decode, both published figures at the
    # batch they imply; the same iteration model against DeepSeek's own decode trace (96 ms a step) and prefill
    # profile; the rows outside the bar say so
    for start, figure in (
        ("| mlperf-v4.1-mixtral-8x7b-dgx-h100", "| Offline |"),
        ("| mlperf-v4.1-mixtral-8x7b-dgx-h100", "| Server (p99"),
        ("| mlperf-v4.1-mixtral-8x7b-dgx-h100", "| Server, mean TTFT |"),
        ("| mlperf-v4.1-mixtral-8x7b-dgx-h100", "| Server, mean TPOT |"),
        ("| deepseek-v3-serving-h800", "| 14,800 output tokens/s per node |"),
        ("| deepseek-v3-serving-h800", "| 21.0 output tokens/s per user |"),
        ("| DeepSeek profile-data decode.json", "| 96.0 ms |"),
        ("| DeepSeek profile-data prefill.json", "| 62,713 input tokens/s per node |"),
    ):
        row = next(line for line in table.splitlines() if line.startswith(start) and figure in line)
        assert abs(float(row.split("|")[5].split()[0]) - 1) <= 0.2, row[:120]
    # Mixtral: TFLOP/s by Megatron's own count, 82.93 GFLOP per token for Mixtral 8x7B at 4,096 tokens
    from moesim.models import accounting, model_preset

    assert accounting.megatron_flops_per_token(model_preset("mixtral-8x7b"), 4096) == pytest.approx(82.928e9, rel=1e-4)
    for name, published_tflops in (("mixtral-8x7b-training", 468), ("mixtral-8x22b-training", 445)):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name}"))
        cells = [cell.strip() for cell in row.split("|")[2:5]]
        assert cells[0].startswith(f"{published_tflops} TFLOP/s")
        assert float(cells[2].split()[0]) == pytest.approx(float(cells[1].split()[0]) / published_tflops, abs=0.01)
    # DeepEP's normal kernels: the published bandwidths, and moesim's NVLink at EP 8 within 15% of them
    row = next(line for line in table.splitlines() if line.startswith("| 8 | NVLink"))
    cells = [cell.strip() for cell in row.split("|")[3:9]]
    assert cells[0] == "153 GB/s" and cells[3] == "158 GB/s"
    assert abs(float(cells[2]) - 1) <= 0.15 and abs(float(cells[5]) - 1) <= 0.15
    # DeepSeek's ISCA Table 4 beside moesim's step, part by part: DualPipe's operations, the bubble and the step's
    # end add up to the step, as DeepSeek's do (1.13 + 1.99 + 0.48 + 13.95 + 2.06 + 0.29 = 19.90 of 19.93)
    starts = ("| step |", "| 1F:", "| 1B:", "| 1W:", "| 1F1B:", "| pipeline bubble |", "| optimizer")
    parts = {
        line.split("|")[1].strip(): line.split("|")[3].strip() for line in table.splitlines() if line.startswith(starts)
    }
    assert len(parts) == 7 and "| pipeline bubble | 2.06 |" in table
    assert float(parts["step"]) == pytest.approx(sum(float(v) for k, v in parts.items() if k != "step"), abs=0.03)
    # the low-latency kernels: 163 / 318 us at EP 8, every row within 15%
    low_latency = [line for line in table.splitlines() if line.startswith("| ") and " us |" in line]
    assert len(low_latency) == 6 and low_latency[0].startswith("| 8 | 163 us |")
    assert "outside the bar" not in "".join(low_latency)
