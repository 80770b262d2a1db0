"""Calibration writes a profile the simulator loads; its timing and fitting helpers are exact on known data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moesim.cost import model_from_profile
from moesim.cost.phase_features import (
    DEVICE_PHASE_FEATURES,
    HOST_PHASE_FEATURES,
    PhaseWork,
    host_phase_features,
    router_fit_key,
)
from moesim.errors import MoesimError
from moesim.executor.launch import skewed_tokens
from moesim.validation.calibrate import LAYER_CONFIGS, calibrate, fit_latency_bandwidth
from moesim.validation.timing import interleaved_samples, nonnegative_relative_fit
from moesim.validation.validate import Config, default_grid
from moesim.validation.validate_report import rule_orderings


def test_fit_recovers_latency_and_bandwidth() -> None:
    points = [(size, 1e-4 + size * 0.5 / 2e9) for size in (1e3, 1e5, 1e7)]
    latency, bandwidth = fit_latency_bandwidth(points, ranks=2)
    assert latency == pytest.approx(1e-4, rel=1e-6) and bandwidth == pytest.approx(2e9, rel=1e-6)


def test_nonnegative_relative_fit_recovers_coefficients_and_drops_negative_ones() -> None:
    rng = np.random.default_rng(0)
    features = np.column_stack([np.ones(12), rng.uniform(1e3, 1e6, 12), rng.uniform(1e2, 1e4, 12)])
    truth = np.array([2e-4, 3e-9, 5e-8])
    assert nonnegative_relative_fit(features, features @ truth) == pytest.approx(list(truth), rel=1e-9)
    # a phase that does not depend on the third feature, whose unconstrained fit would go negative
    target = features[:, :2] @ truth[:2] - 1e-9 * features[:, 2]
    fitted = nonnegative_relative_fit(features, target)
    assert fitted[2] == 0.0 and all(value >= 0 for value in fitted)


def test_interleaved_samples_visit_every_task_each_round() -> None:
    calls: list[str] = []
    samples = interleaved_samples({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, repeats=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # one untimed run each, then rounds
    assert {key: len(values) for key, values in samples.items()} == {"a": 6, "b": 6}


def test_skewed_tokens_shift_the_router_logits_by_the_zipf_bias() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 64, generator=generator, dtype=torch.float64)
    x = torch.randn(100, 64, generator=generator, dtype=torch.float64)
    shifted = skewed_tokens(x, weight, 1.0)
    expected_bias = -torch.log(torch.arange(1, 9, dtype=torch.float64))
    assert torch.allclose(shifted @ weight.t() - x @ weight.t(), expected_bias.expand(100, 8), atol=1e-9)
    assert skewed_tokens(x, weight, 0.0) is x


def test_host_phase_features_and_keys() -> None:
    assert host_phase_features("router", 1024, 256, 8, 2) == (1.0, 1024 * 256 * 8, 1024 * 8, 2048)
    assert host_phase_features("permute", 1024, 256, 8, 2) == (1.0, 2048, 2048 * 256)
    assert host_phase_features("unpermute", 1024, 256, 8, 2, slots=1500) == (
        1.0,
        1500,
        1500 * 256,
        1024 * 256,
    )  # drops excluded
    assert host_phase_features("experts", 1024, 256, 8, 2, active_experts=4, rows=2048, ffn_seconds=0.01) == (
        0.01,
        4,
        2048 * 256,
    )
    assert router_fit_key("top_k", None) == "router:top_k"
    assert router_fit_key("top_k", 1.25) == "router:top_k+capacity"
    assert router_fit_key("expert_choice", None) == router_fit_key("expert_choice", 2.0) == "router:expert_choice"


def _profile(tmp_path: Path, phase_fit: dict) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps({"device": "test", "peak_flops": 1e11, "memory_bytes_per_s": 2e10, "phase_fit": phase_fit})
    )
    return path


def test_profile_phase_fits_are_used_and_checked(tmp_path: Path) -> None:
    model = model_from_profile(_profile(tmp_path, {"router:top_k": {"coefficients": [1e-4, 1e-10, 2e-8, 0.0]}}))
    work = PhaseWork(1000, 100, 10, 1)
    assert model.fitted("router:top_k", work) == pytest.approx(1e-4 + 1e-4 + 2e-4)
    assert model.fitted("permute", work) is None
    with pytest.raises(MoesimError, match="phase_fit 'permute' needs 3 coefficients"):
        model_from_profile(_profile(tmp_path, {"permute": {"coefficients": [1.0]}}))
    # a profile names its features: a single-device profile's router is linear in its projection's seconds
    named = {"router:top_k": {"features": ["1", "router GEMM seconds"], "coefficients": [1e-4, 2.0]}}
    device_model = model_from_profile(_profile(tmp_path, named))
    assert device_model.fitted("router:top_k", PhaseWork(1000, 100, 10, 1, router_gemm_seconds=1e-5)) == pytest.approx(
        1.2e-4
    )
    with pytest.raises(MoesimError, match="unknown features"):
        model_from_profile(
            _profile(tmp_path, {"router:top_k": {"features": ["1", "bogus"], "coefficients": [1.0, 1.0]}})
        )
    assert set(HOST_PHASE_FEATURES) == {"router", "permute", "unpermute", "experts"}
    assert set(DEVICE_PHASE_FEATURES) == {*HOST_PHASE_FEATURES, "shared_experts", "backward"}


def test_calibration_sizes_are_unlike_the_validation_grid() -> None:
    grid = default_grid()
    validation_sizes = {(c.tokens, c.hidden) for c in grid}
    assert not validation_sizes & {(tokens, hidden) for tokens, hidden, _, _ in LAYER_CONFIGS}
    assert {c.hidden for c in grid}.isdisjoint({hidden for _, hidden, _, _ in LAYER_CONFIGS})
    assert any(c.skew for c in grid) and len({c.rule_label for c in grid}) == 3
    four = default_grid(ranks=4)
    assert four and all(c.ranks == 4 and c.experts % 4 == 0 for c in four)
    assert all(experts % 4 == 0 for _, _, experts, _ in LAYER_CONFIGS)  # every calibration layer runs on 2 or 4 ranks


def test_rule_orderings_compare_rules_on_shared_shapes() -> None:
    def row(rule: str, shape: str, measured: float, predicted: float) -> dict:
        return {"phase": "layer", "rule": rule, "shape": shape, "measured_s": measured, "predicted_s": predicted}

    rows = [
        row("a", "s1", 1.0, 1.1),
        row("b", "s1", 2.0, 2.2),  # b slower in both
        row("a", "s2", 2.5, 2.0),
        row("b", "s2", 2.0, 2.6),  # order flipped
        row("a", "s3", 5.0, 5.0),
        row("b", "s3", 5.1, 4.95),  # tied in both: not counted
        row("a", "only-a", 100.0, 1.0),
    ]
    assert rule_orderings(rows) == (True, 1, 2)  # totals: a 8.5 / 8.1 before b 9.1 / 9.75 in both
    rows_tied = [row("a", "s1", 1.0, 1.0), row("b", "s1", 1.02, 1.5)]
    assert rule_orderings(rows_tied) == (False, 0, 0)  # measured tied, predicted 50% apart
    assert Config(1024, 256, 4, 1, 1.25, "top_k", 1.0).label == "top_k R=2 T=1024 h=256 E=4 k=1 cf 1.25 skew 1"


def test_quick_calibration_profile_loads(tmp_path: Path) -> None:
    path = calibrate("cpu", ranks=2, out_dir=tmp_path, quick=True)
    profile = json.loads(path.read_text())
    assert profile["peak_flops"] > 0 and profile["memory_bytes_per_s"] > 0
    assert max(profile["gemm_efficiency"]["efficiency"]) == pytest.approx(1.0)
    assert profile["alltoall"]["bytes_per_s"] > 0 and len(profile["alltoall"]["seconds"]) == 3
    assert {"router:top_k", "router:top_k+capacity", "router:expert_choice", "permute", "unpermute", "experts"} <= set(
        profile["phase_fit"]
    )
    assert all(value >= 0 for fit in profile["phase_fit"].values() for value in fit["coefficients"])
    model = model_from_profile(path)
    assert model.efficiency(1024) > model.efficiency(1)
    assert model.fitted("permute", PhaseWork(4096, 256, 8, 2, slots=8192)) > model.fitted(
        "permute", PhaseWork(256, 64, 8, 1, slots=256)
    )


def test_validate_writes_a_report(tmp_path: Path) -> None:
    from moesim.validation.validate import validate
    from moesim.validation.validate_report import summary, write_report

    profile = calibrate("cpu", ranks=2, out_dir=tmp_path, quick=True)
    rows, used = validate(profile, ranks=2, quick=True, rounds=2, repeats=1)
    assert used == profile
    assert len(rows) == 2 * 8 and all(row["measured_s"] > 0 and row["predicted_s"] > 0 for row in rows)
    assert all(row["samples"] == 2 and not row["calibrated_alongside"] for row in rows)
    stats = summary(rows)
    layer_errors = [row["error"] for row in rows if row["phase"] == "layer"]
    assert stats["count"] == 2 and stats["median"] == pytest.approx(float(np.median(layer_errors)))
    assert stats["p90"] >= stats["median"] > 0  # two real runs against a model never agree exactly
    assert stats["max"] >= stats["p90"] and stats["under"] == sum(
        row["predicted_s"] < row["measured_s"] for row in rows if row["phase"] == "layer"
    )
    # the router scores each prediction replayed regenerate from the configuration alone, to the last bit
    from moesim.validation.traces import check_rows

    assert all(len(row["trace_sha256"]) == 64 for row in rows) and check_rows(rows) == (2, [])
    held = [{**row, "held_out": True, "config": row["config"] + " h"} for row in rows]
    report = write_report(rows + held, {2: json.loads(Path(profile).read_text())}, tmp_path / "out", 2, 1)
    text = report.read_text()
    assert "Layer time error" in text and "| router |" in text and "| layer_wall |" in text
    assert "## Held-out grid" in text and "(held out)" in text and "under-predicted" in text
    assert summary(rows + held, held_out=True)["median"] == stats["median"]  # held-out rows kept apart
    assert (tmp_path / "out" / "validation_layer_time.svg").read_text().startswith("<svg")


def test_the_held_out_grid_is_drawn_once_from_sizes_nobody_tuned_on() -> None:
    from moesim.validation.calibrate import LAYER_CONFIGS
    from moesim.validation.validate import held_out_grid

    for ranks in (2, 4):
        grid = held_out_grid(ranks)
        assert grid == held_out_grid(ranks) and len(grid) == (16 if ranks == 2 else 8)
        assert all(config.held_out and config.experts % ranks == 0 for config in grid)
        main = default_grid(False, ranks)
        assert {c.tokens for c in grid}.isdisjoint({c.tokens for c in main} | {c[0] for c in LAYER_CONFIGS})
        assert {c.hidden for c in grid}.isdisjoint({c.hidden for c in main} | {c[1] for c in LAYER_CONFIGS})
    two_ranks = held_out_grid(2)
    assert len({config.strategy for config in two_ranks}) == 2 and any(c.mode == "training" for c in two_ranks)


def test_validate_calibrates_alongside_when_given_no_profile(tmp_path: Path) -> None:
    from moesim.validation.validate import validate

    rows, profile = validate(None, ranks=2, quick=True, rounds=1, repeats=1, profile_dir=tmp_path)
    assert profile.parent == tmp_path and profile.exists()
    assert {"router:top_k", "permute", "experts"} <= set(json.loads(profile.read_text())["phase_fit"])
    assert len(rows) == 2 * 8 and all(row["calibrated_alongside"] for row in rows)


def test_single_device_grids_keep_calibration_and_validation_apart() -> None:
    from moesim.validation.layer_cases import layer_grids

    for device, quick in (("cuda", False), ("cpu", False), ("cpu", True)):
        calibration, validation = layer_grids(device, quick)
        shapes = {case.shape for case in calibration}
        assert shapes.isdisjoint({case.shape for case in validation})
        assert {case.shape.hidden for case in calibration}.isdisjoint({case.shape.hidden for case in validation})
        assert any(case.training for case in calibration) and any(case.training for case in validation)
        calibrated = {case.rule_label for case in calibration} | {"top_k cf 1.25", "expert_choice cf 1"}
        assert {case.rule_label for case in validation} <= calibrated
    calibration, validation = layer_grids("cuda")
    assert {case.shape.name for case in validation} >= {"mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b"}
    assert {case.tokens for case in validation} >= {1024, 32768} and {case.top_k for case in validation} >= {1, 8}
    assert any(case.skew for case in validation) and any(case.shape.shared for case in validation)


def test_single_device_validation_runs_and_refits_from_its_raw_data(tmp_path: Path) -> None:
    """The whole pipeline on the CPU: measure, keep the raw data, fit, predict, report; --from-raw gives the same
    rows."""
    from typer.testing import CliRunner

    from moesim.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["validate", "--single-device", "--quick", "--rounds", "1", "--repeats", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    (folder,) = [path for path in tmp_path.iterdir() if path.name != "profiles"]
    report = (folder / "REPORT.md").read_text()
    assert "Layer-time error" in report and "phase backward" in report and "phase shared_experts" in report
    rows = json.loads((folder / "rows.json").read_text())
    assert {row["phase"] for row in rows} >= {"router", "permute", "experts", "unpermute", "backward", "layer"}
    assert all(row["measured_s"] > 0 and row["predicted_s"] > 0 for row in rows)
    profile = json.loads((tmp_path / "profiles" / f"{folder.name}.json").read_text())
    assert {"experts", "permute", "unpermute", "backward", "shared_experts"} <= set(profile["phase_fit"])
    again = runner.invoke(app, ["validate", "--from-raw", str(folder / "raw.json"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / folder.name / "rows.json").read_text()) == rows
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    refused = runner.invoke(app, ["validate", "--from-raw", str(broken)])
    assert refused.exit_code == 2 and "not a single-device run" in refused.output


def test_single_device_calibration_writes_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    """`moesim calibrate --device cuda` on any GPU runs this; on the CPU it runs the same steps at small sizes."""
    from moesim.validation.single_device import calibrate_single_device

    path = calibrate_single_device("cpu", quick=True, rounds=1, repeats=1, profile_dir=tmp_path)
    model = model_from_profile(path)
    keys = {key for key, _, _ in model.phase_fit}
    assert {"permute", "unpermute", "experts", "backward", "router:top_k"} <= keys
    assert model.fitted("permute", PhaseWork(512, 64, 8, 2, slots=1024, carried_rows=1024, sort_keys=1024)) > 0
