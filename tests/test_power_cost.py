"""Electricity in the cost (issue 29): each GPU's board power for the whole hour at a price per kWh, added to the
GPU-hour: the cost per million tokens grows by exactly the energy per million tokens times that price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.scenario import load_scenario
from moesim.serving import simulate_serving

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
runner = CliRunner()


def test_served_cost_with_power_is_the_energy_at_its_price_added() -> None:
    path = SCENARIOS / "mixtral-8x7b-serving.yaml"
    plain = simulate_serving(load_scenario(path))
    powered = simulate_serving(load_scenario(path, ["serving.power_price_per_kwh=0.15"]))
    assert plain.energy_kwh_per_million_tokens == pytest.approx(700 / plain.output_tokens_per_s_per_gpu / 3.6)
    assert powered.dollars_per_million_output_tokens == pytest.approx(
        plain.dollars_per_million_output_tokens + 0.15 * plain.energy_kwh_per_million_tokens
    )


def test_a_training_plan_prices_power_and_gives_each_options_energy() -> None:
    arguments = ["plan", str(SCENARIOS / "olmoe-1b-7b-training.yaml"), "--target-tokens-per-s", "1e6", "--json"]
    plain = json.loads(runner.invoke(app, arguments).stdout)["options"][0]
    powered = json.loads(runner.invoke(app, [*arguments, "--power-price", "0.2"]).stdout)["options"][0]
    assert (plain["gpus"], plain["tp_size"], plain["ep_size"]) == (
        powered["gpus"],
        powered["tp_size"],
        powered["ep_size"],
    )
    energy = plain["energy_kwh_per_million_tokens"]
    assert energy == pytest.approx(700 * plain["gpus"] / plain["tokens_per_s"] * 1e6 / 3.6e6)
    assert powered["dollars_per_million_tokens"] == pytest.approx(plain["dollars_per_million_tokens"] + 0.2 * energy)
    assert powered["dollars_per_hour"] == pytest.approx(plain["dollars_per_hour"] + plain["gpus"] * 0.7 * 0.2)
