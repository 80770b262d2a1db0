"""Bad inputs a new user tried (issue 29's list): each gets one clear line and exit 2, and leaves nothing
half-written; and the silent numbers it found now say what they are."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.cli import app

REPO = Path(__file__).resolve().parent.parent
SERVING = str(REPO / "scenarios" / "mixtral-8x7b-serving.yaml")
SWEEP = str(REPO / "scenarios" / "switch-base-8-capacity.toml")
runner = CliRunner()


def one_line_exit_2(arguments: list[str], said: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], result.stderr


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("model: mixtral-8x7b\nmodel: olmoe-1b-7b\n", "line 2, column 1: duplicate key 'model'"),
        ("model: mixtral-8x7b\nworkload:\n  seq_len: 10\n  seq_len: 20\n", "duplicate key 'seq_len'"),
    ],
)
def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    one_line_exit_2(["run", str(path)], said)


def test_a_json_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"model": "mixtral-8x7b", "model": "olmoe-1b-7b"}')
    one_line_exit_2(["run", str(path)], "duplicate key 'model'")


def test_a_zero_throughput_target_is_refused() -> None:
    one_line_exit_2(
        ["plan", str(REPO / "scenarios" / "olmoe-1b-7b-training.yaml"), "--target-tokens-per-s", "0"],
        "--target-tokens-per-s: 0 tokens/s is no target",
    )


def test_a_param_without_values_names_the_param_option() -> None:
    one_line_exit_2(["sweep", SWEEP, "-p", "routing.capacity_factor"], "--param 'routing.capacity_factor'")


def test_a_bad_value_in_a_param_list_stops_before_any_work_and_stores_nothing(tmp_path: Path) -> None:
    store = tmp_path / "results.sqlite"
    one_line_exit_2(
        ["sweep", SWEEP, "-p", "routing.capacity_factor=1.0,abc", "--store", str(store)],
        "--param routing.capacity_factor=abc: no point of the grid takes it",
    )
    if store.exists():
        with sqlite3.connect(store) as connection:
            tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
            assert all(connection.execute(f"select count(*) from {table}").fetchone()[0] == 0 for table in tables)


def test_lengths_with_min_above_max_say_so() -> None:
    one_line_exit_2(
        ["serve", SERVING, "--set", "serving.input_tokens={min: 2000, max: 1000}"],
        "serving.input_tokens: min (2000) is above max (1000); swap them",
    )


def test_an_overloaded_deployment_says_so_in_its_headline_and_json() -> None:
    overload = ["--set", "serving.arrival=poisson", "--set", "serving.request_rate=1e6"]
    result = runner.invoke(app, ["serve", SERVING, *overload])
    assert result.exit_code == 0, result.output
    assert "warning: serve: overloaded" in result.stderr
    assert "OVERLOADED" in result.stdout
    data = json.loads(runner.invoke(app, ["serve", SERVING, *overload, "--json"]).stdout)
    assert data["overloaded"] is True and data["load"] > 1
    calm = json.loads(runner.invoke(app, ["serve", SERVING, "--json"]).stdout)
    assert calm["overloaded"] is False


def test_make_test_installs_nothing_outside_the_checkout() -> None:
    makefile = (REPO / "Makefile").read_text()
    test_rule = makefile[makefile.index("\ntest:") :].split("\n\n")[0]
    assert "apt-get" not in makefile and ".browser" not in test_rule
    assert "apt-get install" in (REPO / ".ci" / "run").read_text()  # CI may install a browser


def test_the_simulator_benchmark_runs_where_dualpipe_cannot() -> None:
    """benchmarks/sim.py, which docs/simulator.md cites, died at once: DeepSeek-V3's DualPipe at one stage."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sim", REPO / "benchmarks" / "sim.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.deepseek(64, "fast") > 0


def test_run_shows_what_the_peak_memory_holds() -> None:
    result = runner.invoke(app, ["run", SERVING])
    assert result.exit_code == 0
    for part in ("weights", "activations", "KV cache", "all-to-all buffers"):
        assert f"  {part}" in result.stdout


def test_energy_per_million_tokens_with_its_source_in_run_and_serve() -> None:
    """Every GPU at its datasheet board power for the whole run: Mixtral 8x7B on 8 H100 at 700 W each."""
    from moesim.cluster.hardware import gpu_preset
    from moesim.cluster.power import energy_per_million_tokens

    energy = energy_per_million_tokens(gpu_preset("H100-SXM"), 1000.0)
    assert energy is not None and energy.kwh_per_million_tokens == pytest.approx(700 / 1000 * 1e6 / 3.6e6)
    assert "board power (700 W, H100-SXM)" in energy.source and "not measured" in energy.source
    ran = json.loads(runner.invoke(app, ["run", SERVING, "--json"]).stdout)
    assert ran["energy_kwh_per_million_tokens"] == pytest.approx(700 / ran["tokens_per_s_per_gpu"] / 3.6)
    served = json.loads(runner.invoke(app, ["serve", SERVING, "--json"]).stdout)
    assert served["energy_kwh_per_million_tokens"] == pytest.approx(700 / served["output_tokens_per_s_per_gpu"] / 3.6)
    assert "energy: assumed" in runner.invoke(app, ["serve", SERVING]).stdout


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["scenarios/olmoe-1b-7b-training.yaml", "--max-gpus", "8"], "plan --serve: this is a training scenario"),
        ([SERVING, "--max-gpus", "1"], "--max-gpus: plan --serve searches whole nodes of 8 GPUs"),
    ],
)
def test_plan_serve_says_why_there_is_nothing_to_search(arguments: list[str], said: str) -> None:
    """It said 'none of 0 layouts meets the targets' (or asked for a request rate) where the scenario was a
    training one or no whole node fits under --max-gpus."""
    path, *rest = arguments
    one_line_exit_2(
        ["plan", str(REPO / path) if not path.startswith("/") else path, "--serve", "--request-rate", "10", *rest], said
    )


def test_calibrate_does_not_overwrite_the_committed_profiles_by_default() -> None:
    """`moesim calibrate --ranks 2`, as docs/executor.md shows it, wrote over the committed
    validation/profiles/cpu-x86_64-2ranks-1thread-each.json; its default folder is now the user's own."""
    import inspect

    from moesim.cli.executor import calibrate

    default = inspect.signature(calibrate).parameters["out"].default.default
    assert default == Path("profiles") and "/profiles/" in (REPO / ".gitignore").read_text()


def test_a_decode_sweep_shows_the_decode_step(tmp_path: Path) -> None:
    """The decode-latency scenario says 'compare decode_step_s'; the sweep table hid it."""
    result = runner.invoke(
        app,
        [
            "sweep", SERVING, "-p", "workload.micro_batch_size=1,2", "--store", str(tmp_path / "s.sqlite"),
            "--set", "simulation.network_mode=fast", "--set", "workload.decode_tokens=4",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decode (ms)" in result.stdout


def test_an_unreachable_ray_address_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 10.255.255.1:6379")

    monkeypatch.setattr(ray, "init", unreachable)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    arguments = ["sweep", SWEEP, "--store", str(tmp_path / "s.sqlite"), "--ray", "10.255.255.1:6379"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # beside the progress bar
    assert errors == [errors[0]] and "--ray: cannot reach a Ray cluster at '10.255.255.1:6379'" in errors[0]
    assert "Traceback" not in result.output


def test_the_mixtral_reports_latency_plot_shows_a_distribution_and_says_when_there_is_none() -> None:
    """Its latency plot was two vertical lines: every request of one length, in a closed loop run in lockstep, got
    the same latency. The scenario's requests now vary in length, and a plot of identical latencies says why."""
    from moesim.planning.plots import latency_spread
    from moesim.scenario import load_scenario
    from moesim.serving import simulate_serving

    served = simulate_serving(load_scenario(SERVING))
    ttft = sorted(served.ttft_samples_s)
    assert ttft[-1] > 2 * ttft[0] and len(set(served.tpot_samples_s)) > 10
    assert latency_spread([0.25] * 50, "s", 1.0) == "every request 0.25 s (identical requests in lockstep)"
    assert latency_spread([0.1, 0.2, 0.3], "ms", 1e3) == "p50 200 ms, p99 298 ms"
