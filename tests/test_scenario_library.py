"""Every shipped scenario loads, fits in memory at its stated deployment, and simulates (in fast mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim import load_scenario, simulate

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.*"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.name for path in SCENARIOS])
def test_scenario_runs(path: Path) -> None:
    scenario = load_scenario(path, ["simulation.network_mode=fast", "simulation.max_routed_tokens=4096",
                                    "simulation.bias_warmup_steps=5"])
    assert scenario.description, "every scenario says what question it answers"
    result = simulate(scenario)  # memory is checked: the deployment as written must fit
    assert result.step_time_s > 0 and 0 < result.mfu < 1
    assert result.memory["total_bytes"] <= result.memory["capacity_bytes"]
    for point in scenario.sweep.params:
        assert point.split(".")[0] in type(scenario).model_fields


def test_published_comparison_table() -> None:
    from moesim.validation.published import published_table

    table = published_table(network_mode="fast")
    assert "deepseek-v3-pretraining" in table and "180K GPU-h" in table
    assert "| 1." in table or "| 0." in table or "| 2." in table  # the ratio is printed, whatever it is
