"""Plans a buyer can count on (issue 27): `plan --serve --margin p90` sizes for TTFT and TPOT as much slower than
predicted as the held-out measured runs were at that percentile, and says what the plan is without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.planning.serving import cheapest_within, plan_serving
from moesim.scenario import read_document
from moesim.serving.checked import RUN_ERRORS, held_out_margin

SERVING = Path(__file__).resolve().parent.parent / "scenarios" / "mixtral-8x7b-serving.yaml"


def test_the_margin_is_the_measured_over_predicted_percentile_of_single_node_runs(tmp_path: Path) -> None:
    errors = [-0.5, -0.2, 0.0, 0.1, 0.3, -0.4, 0.2, -0.1, 0.05, -0.3]
    runs = [{"id": i, "group": "single-node", "ttft_error": e, "tpot_error": e / 2} for i, e in enumerate(errors)]
    runs.append({"id": 99, "group": "multi-node", "ttft_error": -0.9, "tpot_error": -0.9})  # not counted
    path = tmp_path / "errors.json"
    path.write_text(json.dumps({"commit": "abc", "date": "2026-12-08", "runs": runs}))
    margin = held_out_margin(90, path)
    assert margin.runs == 10
    assert margin.ttft == pytest.approx(np.percentile([1 / (1 + e) for e in errors], 90))
    assert margin.tpot == pytest.approx(np.percentile([1 / (1 + e / 2) for e in errors], 90))
    never_below_one = held_out_margin(10, path)  # the 10th percentile is a run predicted too slow: no margin
    assert never_below_one.ttft == 1.0 and never_below_one.tpot == 1.0


def test_the_committed_errors_give_a_p90_margin_above_one() -> None:
    margin = held_out_margin(90, RUN_ERRORS)
    assert margin.runs >= 100 and margin.ttft > 1 and margin.tpot > 1


def test_a_margined_plan_meets_the_targets_with_the_margin_and_costs_no_less() -> None:
    document = read_document(SERVING)
    margined = plan_serving(document, 2.0, 1.0, 0.05, max_gpus=8, margin=(1.5, 1.5))
    for option in margined.options:
        assert option.result.ttft_s[90] * 1.5 <= 1.0 and option.result.tpot_s[90] * 1.5 <= 0.05
    plain = cheapest_within(margined, 1.0, 0.05, 0.95, (1.0, 1.0))
    assert plain is not None
    if margined.options:
        assert (
            margined.options[0].result.dollars_per_million_output_tokens
            >= plain.result.dollars_per_million_output_tokens
        )


def test_plan_serve_margin_says_the_answer_without_it() -> None:
    arguments = ["plan", str(SERVING), "--serve", "--request-rate", "2", "--ttft", "1", "--tpot", "0.05"]
    result = CliRunner().invoke(app, [*arguments, "--max-gpus", "8", "--margin", "p90", "--json"])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert data["margin"]["quantile"] == 90 and data["margin"]["tpot"] > 1
    assert data["without_margin"] is not None
    bad = CliRunner().invoke(app, [*arguments, "--margin", "90%"])
    assert bad.exit_code == 2 and "--margin" in bad.stderr
