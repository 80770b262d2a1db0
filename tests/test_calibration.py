"""Calibration writes a profile the simulator loads, with a fitted all-to-all model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.sim.compute import CostModel
from moesim.validation.calibrate import calibrate, fit_latency_bandwidth


def test_fit_recovers_latency_and_bandwidth() -> None:
    points = [(size, 1e-4 + size * 0.5 / 2e9) for size in (1e3, 1e5, 1e7)]
    latency, bandwidth = fit_latency_bandwidth(points, ranks=2)
    assert latency == pytest.approx(1e-4, rel=1e-6) and bandwidth == pytest.approx(2e9, rel=1e-6)


def test_quick_calibration_profile_loads(tmp_path: Path) -> None:
    path = calibrate("cpu", ranks=2, hidden=64, ffn=128, out_dir=tmp_path, quick=True)
    profile = json.loads(path.read_text())
    assert profile["peak_flops"] > 0 and profile["memory_bytes_per_s"] > 0
    assert max(profile["gemm_efficiency"]["efficiency"]) == pytest.approx(1.0)
    assert profile["alltoall"]["bytes_per_s"] > 0 and len(profile["alltoall"]["seconds"]) == 3
    model = CostModel.from_profile(path)
    assert model.efficiency(1024) > model.efficiency(1)


def test_validate_writes_a_report(tmp_path: Path) -> None:
    from moesim.validation.validate import default_grid, summary, validate, write_report

    profile = calibrate("cpu", ranks=2, hidden=64, ffn=128, out_dir=tmp_path, quick=True)
    rows = validate(profile, ranks=2, quick=True, repeats=2)
    assert len(rows) == 2 * 7 and all(row["measured_s"] > 0 and row["predicted_s"] > 0 for row in rows)
    stats = summary(rows)
    assert stats["count"] == 2 and stats["median"] >= 0
    report = write_report(rows, json.loads(Path(profile).read_text()), 2, tmp_path / "out")
    text = report.read_text()
    assert "Layer time error" in text and "| router |" in text
    assert (tmp_path / "out" / "validation_layer_time.svg").read_text().startswith("<svg")
    assert len(default_grid()) > 20
