"""Sizing reports: HTML with every plot embedded (checked in headless Chromium) and Markdown."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from moesim import scenario_from_dict
from moesim.planning.report import write_report

PLOTS = 5


def small_scenario():  # type: ignore[no-untyped-def]
    return scenario_from_dict(
        {
            "name": "report-test",
            "description": "How fast is a small MoE step on one node?",
            "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
            "cluster": {"num_nodes": 1, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "workload": {"micro_batch_size": 1, "seq_len": 1024, "expert_popularity_skew": 0.5},
            "routing": {"capacity_factor": 1.25},
            "simulation": {"max_routed_tokens": 4096},
        }
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_report(small_scenario(), tmp_path_factory.mktemp("report"), fast=True)


def test_report_files(report: tuple[Path, Path]) -> None:
    html_path, md_path = report
    page = html_path.read_text()
    assert page.count('<img class="plot"') == PLOTS and page.count("data:image/png;base64,") == PLOTS
    assert "How fast is a small MoE step" in page and "Answer." in page
    markdown = md_path.read_text()
    assert markdown.count("![") == PLOTS
    # which moesim, which commit, when: a report handed on says what made it
    assert re.search(r"\*moesim [^,]+, commit \S+.*, written \d{4}-\d\d-\d\d \d\d:\d\d UTC\*", markdown)
    assert "commit" in page and "written" in page
    for name in re.findall(r"\]\((plot\d\.png)\)", markdown):
        assert (md_path.parent / name).read_bytes().startswith(b"\x89PNG")


def test_report_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine: the browser check is skipped (.ci/run installs one for CI)")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report[0].resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    sizes = re.findall(r'data-rendered="(\d+)x(\d+)"', dom)
    assert len(sizes) == PLOTS, dom[:500]
    assert all(int(width) > 100 and int(height) > 100 for width, height in sizes)


def test_report_from_a_results_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from moesim.cli import app
    from moesim.planning.sweep import run_sweep

    store = tmp_path / "results.sqlite"
    document = small_scenario().model_dump(mode="json")
    document["sweep"] = {"params": {"routing.capacity_factor": [1.0, 2.0]}, "store": str(store), "workers": 1}
    first = run_sweep(document)
    document["sweep"]["params"] = {"routing.top_k": [1, 2, 4]}  # a second sweep in the same store, the latest
    second = run_sweep(document)
    result = CliRunner().invoke(app, ["report", str(store), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<img class="plot"') == 4 and "fastest of 3 points" in page  # the latest sweep only
    assert f"other sweeps in the store (report one with --sweep ID): {first.sweep_id} (2 points)" in page
    assert page.count("<tr>") == 1 + 3 and "top_k=1" in page  # the numbers: a header and one row per point
    chosen = CliRunner().invoke(app, ["report", str(store), "--out", str(tmp_path / "one"), "--sweep", first.sweep_id])
    assert chosen.exit_code == 0 and "fastest of 2 points" in (tmp_path / "one" / "report.md").read_text()
    unknown = CliRunner().invoke(app, ["report", str(store), "--out", str(tmp_path / "x"), "--sweep", "nope"])
    assert unknown.exit_code == 2 and second.sweep_id in unknown.output
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2


def test_phase_bar_keeps_its_colours_distinct() -> None:
    from moesim.planning.plots import PHASE_SEGMENTS, phase_segments

    phases = {f"phase{index}": float(index) for index in range(20)}  # 19 with time, one at zero
    segments = phase_segments(phases)
    assert len(segments) == PHASE_SEGMENTS + 1 and segments[0] == ("phase19", 19.0)
    assert segments[-1] == ("other (10 phases)", float(sum(range(1, 11))))  # phases 1-10 summed, the zero one dropped
    assert phase_segments({"a": 2.0, "b": 1.0}) == [("a", 2.0), ("b", 1.0)]


def test_serving_cost_plot_scales_replicas_and_names_what_cannot_run() -> None:
    from moesim.planning.report import nearby_sizes

    serving = scenario_from_dict(
        {
            "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
            "cluster": {"num_nodes": 2, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "workload": {"mode": "inference", "micro_batch_size": 4, "seq_len": 512, "decode_tokens": 16},
        }
    )
    points, unrunnable = nearby_sizes(serving, serving.model_dump(mode="json"))
    assert [point["gpus"] for point in points] == [8, 16, 32] and not unrunnable
    throughput = [point["tokens_per_s"] for point in points]
    assert throughput[0] < throughput[1] < throughput[2]  # each replica serves its own batch
    training = scenario_from_dict({**serving.model_dump(mode="json"), "workload": {"global_batch_size": 16}})
    _, unrunnable = nearby_sizes(training, training.model_dump(mode="json"))
    assert unrunnable and "global_batch_size" in unrunnable[-1][1]  # 64 GPUs cannot split 16 sequences


def test_serving_reports_show_latency_distributions_and_the_curve(tmp_path: Path) -> None:
    scenario = scenario_from_dict(
        {
            "name": "serving-report",
            "description": "How fast does a small MoE serve?",
            "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
            "cluster": {"num_nodes": 1, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "workload": {"mode": "inference", "micro_batch_size": 4, "seq_len": 512, "decode_tokens": 16},
            "serving": {"input_tokens": 512, "output_tokens": 32, "num_requests": 80},
        }
    )
    _, md_path = write_report(scenario, tmp_path, fast=True)
    markdown = md_path.read_text()
    assert markdown.count("![") == PLOTS + 3
    assert "## Serving latency distributions" in markdown and "## Serving throughput against latency" in markdown
    assert "## Where an iteration's time goes" in markdown
    answer = next(line for line in markdown.splitlines() if line.startswith("**Answer.**"))
    assert "Served as a request stream (moesim serve): TTFT p50" in answer and "TPOT p50" in answer
    assert "phases that run at once" in markdown  # the phase bar says why it adds to more than the step


def test_an_iterations_phases_add_up_to_its_time_without_overlap() -> None:
    """The breakdown the report draws is the same pass the engine times: its phases sum to the iteration."""
    from moesim.serving.iteration import IterationCost

    scenario = scenario_from_dict(
        {
            "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
            "cluster": {"num_nodes": 1, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "workload": {"mode": "inference"},
            "serving": {"input_tokens": 512, "output_tokens": 32, "token_budget": 1024},
        }
    )
    cost = IterationCost(scenario)
    for prefill, decode in ((1024, 0), (0, 64)):
        phases = cost.breakdown(prefill, 256.0, decode, 512.0)
        assert {"attention", "experts", "dispatch", "combine"} <= set(phases)
        assert sum(phases.values()) == pytest.approx(cost.seconds(prefill, 256.0, decode, 512.0), rel=1e-6)
