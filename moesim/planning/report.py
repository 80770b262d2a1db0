"""Cluster sizing reports: one self-contained HTML page (plots embedded) and a Markdown twin.

`write_report(scenario, out_dir)` answers the scenario's question with the simulator and
shows the why: step time per phase (stacked bars per pipeline pass), per-expert load
across layers (heatmap), drop rate against capacity factor, cost against throughput
over nearby cluster sizes (Pareto), memory per GPU against the GPU's capacity, and the
validation error that applies to these predictions (from validation/validation_rows.json).
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.planning.accuracy import validation_line
from moesim.planning.plots import (
    drop_plot,
    figure_png,
    load_heatmap,
    memory_plot,
    pareto_plot,
    phase_plot,
)
from moesim.planning.prices import FALLBACK_PRICE_PER_GPU_HOUR
from moesim.planning.report_serving import serving_plots
from moesim.planning.store import ResultsStore
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.routing_load import route_layers
from moesim.sim.sources import phases_by_source
from moesim.sim.step import simulate


def write_report(scenario: Scenario, out_dir: str | Path, fast: bool = False) -> tuple[Path, Path]:
    """Simulate, plot and write report.html and report.md into `out_dir`."""
    document = scenario.model_dump(mode="json")
    mode = ["simulation.network_mode=fast"] if fast else []
    result = simulate(scenario_from_dict(document, mode))
    layers = min(scenario.model.num_moe_layers, 8)
    routed, _ = route_layers(
        scenario_from_dict(document, [f"simulation.max_routed_layers={layers}"]),
        list(range(layers)),
        scenario.workload.micro_batch_size * scenario.workload.seq_len * scenario.parallelism.ep_size,
        scenario.cluster.gpus_per_node,
    )
    loads = np.stack([layer.expert_tokens for layer in routed]) if routed else np.ones((1, scenario.model.num_experts))
    drops = []
    for factor in (0.75, 1.0, 1.25, 1.5, 2.0):
        point = simulate(
            scenario_from_dict(document, ["simulation.network_mode=fast", f"routing.capacity_factor={factor}"]),
            check_memory=False,
        )
        drops.append((factor, point.drop_rate, point.step_time_s))
    nearby, unrunnable = nearby_sizes(scenario, document)
    counted = "tokens" if scenario.workload.mode == "training" else "output tokens"
    plots = {
        "Step time by phase": phase_plot(result),
        "Expert load across layers": load_heatmap(loads),
        "Drop rate against capacity factor": drop_plot(drops),
        "Cost against throughput": pareto_plot(
            nearby
            or [
                {
                    "gpus": result.world_size,
                    "tokens_per_s": result.tokens_per_s,
                    "dollars_per_hour": FALLBACK_PRICE_PER_GPU_HOUR * result.world_size,
                }
            ],
            counted,
        ),
        "Memory per GPU": memory_plot(result.memory),
    }
    serving_notes: list[str] = []
    served: list[str] = []  # the served stream's latencies, for the answer
    if scenario.workload.mode == "inference":
        plots.update(
            serving_plots(scenario_from_dict(document, ["simulation.network_mode=fast"]), serving_notes, served)
        )
    phases_sum = sum(result.phase_seconds.values())
    answer = (
        f"{scenario.model.name} on {scenario.cluster.world_size} x {scenario.cluster.gpu.name}: step time "
        f"{result.step_time_s:.3f} s, {result.tokens_per_s_per_gpu:,.0f} {counted}/s per GPU, MFU {result.mfu:.1%}, "
        f"drop rate {result.drop_rate:.2%}, peak memory {result.memory['total_bytes'] / 1e9:.1f} of "
        f"{result.memory['capacity_bytes'] / 1e9:.0f} GB per GPU"
        + (
            f", {result.energy_kwh_per_million_tokens:.3g} kWh per million {counted} (the GPUs' board power)."
            if result.energy_kwh_per_million_tokens is not None
            else "."
        )
        + (f" Served as a request stream (moesim serve): {served[0]}." if served else "")
    )
    assumptions = [
        *([f"energy: {result.energy_source}"] if result.energy_source else []),
        f"step time by phase: each phase's busy seconds on the busiest stage (mean per rank), {phases_sum:.3g} s in "
        f"all against the {result.step_time_s:.3g} s step: phases that run at once (communication under compute, "
        "micro-batches of a pipeline, two-batch overlap) add up to more than the step they share",
        f"routing: {scenario.routing.strategy}, top-{scenario.routing.top_k}, capacity factor "
        f"{scenario.routing.capacity_factor or 'dropless'}; router scores: {scenario.workload.scores} "
        f"(skew {scenario.workload.expert_popularity_skew})",
        f"parallelism: DP {scenario.parallelism.dp_size}, TP {scenario.parallelism.tp_size}, PP "
        f"{scenario.parallelism.pp_size}, "
        f"EP {scenario.parallelism.ep_size}, ZeRO {scenario.parallelism.zero_stage}",
        "cost plot: $3 per GPU-hour (an assumption); "
        + ("the global batch fixed" if scenario.workload.mode == "training" else "every replica serving its own batch"),
        *[f"cost plot: {size} could not run: {reason}" for size, reason in unrunnable],
        *serving_notes,
        *result.notes,
    ]

    lines = [f"{', '.join(phases)}: {label}" for label, phases in phases_by_source(result.sources)]
    return write_pages(
        scenario.name, scenario.description or "How fast is a step?", answer, assumptions, plots, out_dir, basis=lines
    )


def nearby_sizes(scenario: Scenario, document: dict) -> tuple[list[dict[str, float]], list[tuple[str, str]]]:
    """Throughput and price at half, the same and twice the nodes (fast network mode), and the sizes that cannot
    run with why. Training keeps its global batch; serving gives each data-parallel replica its own batch."""
    points, unrunnable = [], []
    per_replica = ["workload.global_batch_size=null"] if scenario.workload.mode == "inference" else []
    for nodes in sorted(
        {max(1, scenario.cluster.num_nodes // 2), scenario.cluster.num_nodes, 2 * scenario.cluster.num_nodes}
    ):
        try:
            point = simulate(
                scenario_from_dict(
                    document,
                    [
                        "simulation.network_mode=fast",
                        f"cluster.num_nodes={nodes}",
                        "parallelism.dp_size=null",
                        *per_replica,
                    ],
                )
            )
        except MoesimError as error:
            unrunnable.append((f"{nodes} x {scenario.cluster.gpus_per_node} GPUs", str(error).splitlines()[0]))
            continue
        points.append(
            {
                "gpus": point.world_size,
                "tokens_per_s": point.tokens_per_s,
                "dollars_per_hour": FALLBACK_PRICE_PER_GPU_HOUR * point.world_size,
            }
        )
    return points, unrunnable


def write_pages(
    name: str,
    question: str,
    answer: str,
    assumptions: list[str],
    plots: dict[str, bytes],
    out_dir: str | Path,
    basis: Sequence[str] = (),
    table: Sequence[Sequence[str]] = (),
) -> tuple[Path, Path]:
    """report.html (plots embedded as data URIs) and report.md (plots as PNG files beside it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for index, (title, png) in enumerate(plots.items()):
        file_name = f"plot{index}.png"
        (out / file_name).write_bytes(png)
        figures[title] = (file_name, base64.b64encode(png).decode())
    error_line = validation_line()
    stamp = provenance()
    markdown = [
        f"# Sizing report: {name}",
        "",
        f"*{stamp}*",
        "",
        f"**Question.** {question}",
        "",
        f"**Answer.** {answer}",
        "",
        "## Assumptions",
        "",
        *[f"- {item}" for item in assumptions],
        "",
        f"## How sure\n\n{error_line}",
        "",
        *(
            [
                "What each phase's time rests on (measured error: |predicted / measured - 1|):",
                "",
                *[f"- {line}" for line in basis],
                "",
            ]
            if basis
            else []
        ),
    ]
    if table:
        markdown += [
            "## The numbers",
            "",
            "| " + " | ".join(table[0]) + " |",
            "|" + " --- |" * len(table[0]),
            *["| " + " | ".join(row) + " |" for row in table[1:]],
            "",
        ]
    for title, (file_name, _) in figures.items():
        markdown += [f"## {title}", "", f"![{title}]({file_name})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(markdown))
    body = [
        f"<h1>Sizing report: {html.escape(name)}</h1>",
        f"<p><i>{html.escape(stamp)}</i></p>",
        f"<p><b>Question.</b> {html.escape(question)}</p>",
        f"<p><b>Answer.</b> {html.escape(answer)}</p>",
        "<h2>Assumptions</h2><ul>",
        *[f"<li>{html.escape(item)}</li>" for item in assumptions],
        "</ul>",
        f"<h2>How sure</h2><p>{html.escape(error_line)}</p>",
    ]
    if basis:
        body += [
            "<p>What each phase's time rests on (measured error: |predicted / measured - 1|):</p><ul>",
            *[f"<li>{html.escape(line)}</li>" for line in basis],
            "</ul>",
        ]
    if table:
        body += [
            "<h2>The numbers</h2><table>",
            "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>",
            *["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]],
            "</table>",
        ]
    for title, (_, data) in figures.items():
        body += [
            f"<h2>{html.escape(title)}</h2>",
            f'<img class="plot" alt="{html.escape(title)}" src="data:image/png;base64,{data}">',
        ]
    script = (
        "<script>document.querySelectorAll('img.plot').forEach(function(img){function mark(){"
        "img.setAttribute('data-rendered', img.naturalWidth + 'x' + img.naturalHeight);}"
        "if (img.complete) mark(); else img.addEventListener('load', mark);});</script>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>moesim sizing report</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}img{max-width:100%}</style></head><body>"
        + "\n".join(body)
        + script
        + "</body></html>"
    )
    html_path = out / "report.html"
    html_path.write_text(page)
    return html_path, md_path


def read_sweep(
    store_path: str | Path, sweep_id: Optional[str] = None
) -> tuple[list[Any], str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(the store's sweeps, the one to report on, its points, those that finished), or an error saying why there
    is nothing to report: no such store, not a store, no sweep of that id, no finished point. Reads only."""
    with ResultsStore(store_path, create=False) as store:
        sweeps = store.sweeps()
        if not sweeps:
            raise MoesimError(f"{store_path}: no finished points to report on")
        known = [sweep for sweep, _, _ in sweeps]
        if sweep_id is not None and sweep_id not in known:
            raise MoesimError(f"--sweep: no sweep '{sweep_id}' in {store_path}; its sweeps: {', '.join(known)}")
        chosen = sweep_id or known[0]
        rows = store.rows(chosen)
    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        raise MoesimError(f"{store_path}: sweep {chosen} has no finished points to report on")
    return sweeps, chosen, rows, ok


def write_results_report(
    store_path: str | Path, out_dir: str | Path, sweep_id: Optional[str] = None, read: Optional[tuple] = None
) -> tuple[Path, Path]:
    """A report over one sweep of a results store (default: the latest): every point's step time, throughput and
    drops in plots and a table; the fastest point; the store's other sweeps listed (`read`: `read_sweep`'s answer
    where the caller has it already)."""
    sweeps, chosen, rows, ok = read or read_sweep(store_path, sweep_id)
    fixed = {"sweep_id", "status", "error", "sim_seconds"}
    swept = [key for key in ok[0] if key not in fixed and "." in key and not key.startswith("phase.")]
    labels = [
        ", ".join(f"{key.split('.')[-1]}={row.get(key)}" for key in swept) or str(index) for index, row in enumerate(ok)
    ]

    def bars(field: str, label: str, scale: float = 1.0) -> bytes:
        def draw(axes: Any) -> None:
            axes.bar(range(len(ok)), [row[field] * scale for row in ok])
            axes.set_xticks(range(len(ok)), labels, rotation=70, fontsize=6)
            axes.set_ylabel(label)

        return figure_png(draw, width=8.0, height=4.0)

    best = min(range(len(ok)), key=lambda index: ok[index]["step_time_s"])
    plots = {
        "Step time per point": bars("step_time_s", "step time (s)"),
        "Throughput per point": bars("tokens_per_s_per_gpu", "tokens / s per GPU (output tokens when serving)"),
        "Drop rate per point": bars("drop_rate", "dropped pairs (%)", 100.0),
        "Memory per GPU per point": bars("memory_gb", "GB per GPU"),
    }
    answer = (
        f"fastest of {len(ok)} points: {labels[best]} with step time {ok[best]['step_time_s']:.3f} s, "
        f"{ok[best]['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, drop rate {ok[best]['drop_rate']:.2%}."
    )
    failed = len(rows) - len(ok)
    others = [f"{sweep} ({count} points)" for sweep, count, _ in sweeps if sweep != chosen]
    assumptions = [
        f"results store {Path(store_path).name}, sweep {chosen}: {len(rows)} points ({failed} could not run)",
        f"swept: {', '.join(swept) or 'nothing'}",
        *([f"other sweeps in the store (report one with --sweep ID): {', '.join(others)}"] if others else []),
    ]
    order = sorted(range(len(ok)), key=lambda index: ok[index]["step_time_s"])
    table = [["point", "step time (s)", "tokens/s per GPU", "MFU", "drop rate", "memory (GB)"]] + [
        [
            labels[i],
            f"{ok[i]['step_time_s']:.4f}",
            f"{ok[i]['tokens_per_s_per_gpu']:,.0f}",
            f"{ok[i]['mfu']:.1%}",
            f"{ok[i]['drop_rate']:.2%}",
            f"{ok[i]['memory_gb']:.1f}",
        ]
        for i in order
    ]
    return write_pages(
        Path(store_path).stem,
        "Which point of the sweep is fastest, and at what cost in drops and memory?",
        answer,
        assumptions,
        plots,
        out_dir,
        table=table,
    )


def provenance() -> str:
    """Which moesim wrote a report, from which commit, and when: a plan handed on says what made it."""
    try:
        version = importlib.metadata.version("moesim")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"moesim {version}, commit {commit}, written {written}"
