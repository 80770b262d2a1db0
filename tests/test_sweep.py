"""Sweeps: every point once, written as it finishes, resumable, exportable; locally and on Ray."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.errors import MoesimError, ScenarioError
from moesim.planning.grid import grid, parse_param
from moesim.planning.store import ResultsStore, export_csv, export_parquet
from moesim.planning.sweep import run_sweep

REPO = Path(__file__).resolve().parent.parent


def tiny_document(store: Path) -> dict[str, Any]:
    return {
        "name": "tiny-sweep",
        "model": {"preset": "tiny-moe"},
        "cluster": {"num_nodes": 1, "gpus_per_node": 2, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 2},
        "workload": {"micro_batch_size": 2, "seq_len": 128},
        "sweep": {
            "params": {"routing.capacity_factor": [1.0, 1.25, 2.0], "routing.strategy": ["top_k", "hash"]},
            "store": str(store),
            "workers": 1,
        },
    }


def test_grid_and_params() -> None:
    assert parse_param("routing.capacity_factor=1.0,1.25,2") == ("routing.capacity_factor", [1.0, 1.25, 2])
    assert parse_param("routing.strategy=top_k,base") == ("routing.strategy", ["top_k", "base"])
    assert parse_param("routing.capacity_factor=[null, 1.0]") == ("routing.capacity_factor", [None, 1.0])
    points = grid({"routing.top_k": [1, 2], "routing.capacity_factor": [1.0, 2.0]})
    assert len(points) == 4 and len({point.key for point in points}) == 4
    with pytest.raises(ScenarioError, match="did you mean 'capacity_factor'"):
        grid({"routing.capacity": [1.0]})


def test_sweep_writes_each_point_once_and_resumes(tmp_path: Path) -> None:
    store = tmp_path / "results.sqlite"
    document = tiny_document(store)
    first = run_sweep(document, max_points=2)  # interrupted on purpose after two points
    assert (first.total_points, first.ran) == (6, 2)
    with ResultsStore(store) as results:
        assert len(results.rows(first.sweep_id)) == 2
    second = run_sweep(document)
    assert (second.already_done, second.ran) == (2, 4)
    third = run_sweep(document)
    assert third.ran == 0
    with ResultsStore(store) as results:
        rows = results.rows(second.sweep_id)
    assert len(rows) == 6
    keys = {(row["routing.capacity_factor"], row["routing.strategy"]) for row in rows}
    assert len(keys) == 6
    assert all(row["status"] == "ok" and row["step_time_s"] > 0 for row in rows)
    assert all(0 <= row["drop_rate"] <= 1 for row in rows)


def test_points_that_cannot_run_are_stored_with_their_error(tmp_path: Path) -> None:
    document = tiny_document(tmp_path / "r.sqlite")
    document["sweep"]["params"] = {"workload.micro_batch_size": [2, 4096]}
    document["model"] = {
        "preset": "tiny-moe",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 16384,
        "moe_intermediate_size": 16384,
    }
    document["workload"]["seq_len"] = 128
    summary = run_sweep(document)
    assert summary.errors == 1
    with ResultsStore(summary.store) as results:
        failed = [row for row in results.rows(summary.sweep_id) if row["status"] == "error"]
    assert "does not fit" in failed[0]["error"]


def test_exports(tmp_path: Path) -> None:
    summary = run_sweep(tiny_document(tmp_path / "r.sqlite"))
    with ResultsStore(summary.store) as results:
        rows = results.rows(summary.sweep_id)
    csv_text = export_csv(rows, tmp_path / "out.csv").read_text().splitlines()
    assert len(csv_text) == 7 and "step_time_s" in csv_text[0]
    pyarrow = pytest.importorskip("pyarrow.parquet")
    table = pyarrow.read_table(export_parquet(rows, tmp_path / "out.parquet"))
    assert table.num_rows == 6 and "mfu" in table.column_names


def test_process_pool_and_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    scenario = REPO / "scenarios" / "switch-base-8-capacity.toml"
    store = tmp_path / "cli.sqlite"
    args = [
        "sweep",
        str(scenario),
        "--store",
        str(store),
        "--workers",
        "2",
        "--set",
        "simulation.max_routed_tokens=4096",
        "--set",
        "model.num_layers=2",
        "--set",
        "model.num_encoder_layers=2",
        "--csv",
        str(tmp_path / "c.csv"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 points: 0 already" in result.output
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0
    assert len(json.loads(again.output)) == 4
    bad = runner.invoke(app, ["sweep", str(scenario), "--store", str(store), "-p", "routing.capacity_factr=1,2"])
    assert bad.exit_code == 2 and "did you mean" in bad.output


def slow_sweep(tmp_path: Path, points: int) -> tuple[Path, Path]:
    """(store, scenario file) of a sweep whose points take a moment each: time to interrupt it."""
    store, scenario = tmp_path / "sweep.sqlite", tmp_path / "s.json"
    document = tiny_document(store)
    document["sweep"]["params"] = {"workload.seq_len": [64 + 16 * i for i in range(points)]}
    document["model"] = {"preset": "tiny-moe", "num_layers": 16}
    scenario.write_text(json.dumps(document))
    return store, scenario


def test_interrupted_cli_sweep_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    """Kill a running sweep after its first points land, start it again, count the rows."""
    store, scenario = slow_sweep(tmp_path, 24)
    command = [sys.executable, "-m", "moesim.cli", "sweep", str(scenario), "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    stored = 0
    while time.time() < deadline and process.poll() is None:
        if store.exists():
            try:
                stored = sqlite3.connect(store).execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 2:
                break
        time.sleep(0.05)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    summary = run_sweep(json.loads(scenario.read_text()))
    assert summary.already_done >= 2 and summary.ran >= 1  # it was interrupted, and resumed
    assert summary.already_done + summary.ran == 24
    rows = sqlite3.connect(store).execute("SELECT point_key, COUNT(*) FROM points GROUP BY point_key").fetchall()
    assert len(rows) == 24 and all(count == 1 for _, count in rows)


def test_ray_local_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    summary = run_sweep(tiny_document(tmp_path / "ray.sqlite"), use_ray=True)
    assert summary.ran == 6 and summary.errors == 0
    with ResultsStore(summary.store) as results:
        assert len(results.rows(summary.sweep_id)) == 6


def test_empty_sweep_is_an_error(tmp_path: Path) -> None:
    document = tiny_document(tmp_path / "x.sqlite")
    document.pop("sweep")
    with pytest.raises(MoesimError, match="nothing to sweep"):
        run_sweep(document)


def test_failures_are_counted_exit_1_when_all_fail_and_can_be_retried(tmp_path: Path) -> None:
    document = tiny_document(tmp_path / "r.sqlite")
    document["sweep"]["params"] = {"workload.micro_batch_size": [4096, 8192]}
    document["model"] = {
        "preset": "tiny-moe",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 16384,
        "moe_intermediate_size": 16384,
    }
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps(document))
    runner = CliRunner()

    def words(args: list[str]) -> tuple[int, str]:
        result = runner.invoke(app, ["sweep", str(scenario), *args])
        return result.exit_code, " ".join(result.output.split())  # rich wraps long lines

    code, output = words([])
    assert code == 1 and "0 ran, 2 failed" in output and "does not fit" in output
    # a failure is stored like a result: a second run does not repeat it, --retry-failed does
    assert "2 already" in words([])[1]
    code, output = words(["--retry-failed"])
    assert code == 1 and "0 already" in output and "2 simulated now" in output


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_one_interrupt_stops_a_sweep_keeps_its_points_and_leaves_no_process(tmp_path: Path, stop: int) -> None:
    store, scenario = slow_sweep(tmp_path, 40)
    process = subprocess.Popen(
        [sys.executable, "-m", "moesim.cli", "sweep", str(scenario), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, stored, workers = time.time() + 90, 0, set()
    while time.time() < deadline and process.poll() is None and stored < 2:
        workers |= _children(process.pid)
        if store.exists():
            try:
                stored = sqlite3.connect(store).execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
        time.sleep(0.05)
    assert process.poll() is None, "the sweep finished before it could be interrupted"
    workers |= _children(process.pid)
    sent = time.time()
    process.send_signal(stop)
    _, errors = process.communicate(timeout=30)
    assert time.time() - sent < 10 and process.returncode == 130 and "interrupted" in errors
    time.sleep(0.5)
    alive = [
        pid
        for pid in workers
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    ]
    assert workers and not alive, f"workers left behind: {alive}"
    kept = sqlite3.connect(store).execute("SELECT COUNT(*) FROM points").fetchone()[0]
    summary = run_sweep(json.loads(scenario.read_text()), max_points=1)
    assert kept >= 2 and summary.already_done == kept  # nothing finished was lost
