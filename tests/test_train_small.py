"""The small MoE language model trains, logs expert loads, and saves a trace the simulator reads."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from moesim.cli import app
from moesim.executor.train_small import SmallConfig, busiest_share_curve, imbalance_curve, stdlib_text, train
from moesim.workload import load_trace


def test_stdlib_text_is_there() -> None:
    text = stdlib_text(100_000)
    assert len(text) == 100_000 and b"def " in text


def test_training_lowers_the_loss_and_logs_loads(tmp_path: Path) -> None:
    config = SmallConfig(hidden=32, heads=2, ffn=64, seq_len=32, batch=4, steps=25)
    log = train(config, "switch", tmp_path)
    assert log["loss"][-1] < log["loss"][0]
    assert len(log["loads"]) == 25 and len(log["loads"][0]) == 2 and len(log["loads"][0][0]) == 8
    assert all(sum(layer) == 4 * 32 * 2 for step in log["loads"] for layer in step)  # dropless top-2
    assert imbalance_curve(log).shape == (25,)
    share = busiest_share_curve(log)
    assert (
        share.shape == (25,) and ((share >= 2 / 8 - 1e-9) & (share <= 1 + 1e-9)).all()
    )  # 2 of 8 experts: at least even
    layers = load_trace(log["trace"])
    assert len(layers) == 2 and layers[0].logits.shape == (128, 8)
    bias = train(config, "bias", tmp_path)
    assert json.loads((tmp_path / "log-bias.json").read_text())["balancing"] == "bias"
    assert bias["loss"][-1] < bias["loss"][0]


def test_train_small_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train-small", "--balancing", "none", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "load_balance.png").read_bytes().startswith(b"\x89PNG")
    bad = CliRunner().invoke(app, ["train-small", "--balancing", "aux"])
    assert bad.exit_code == 2 and "unknown set-up" in bad.output
