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
    assert published == "180K GPU-h"
    assert float(ratio) == pytest.approx(float(predicted.split("K")[0].replace(",", "")) / 180, abs=0.01)
