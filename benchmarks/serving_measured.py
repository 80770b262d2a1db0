"""moesim's serving predictions against the given file's measured runs (issue 26).

Serves every run of the given file (`../shared/serving-measurements/aiconfigurator-silicon-given.csv`) that moesim
can describe (`moesim.validation.measured_runs`), closed-loop at the run's concurrency, and prints the mean TTFT
and TPOT errors (moesim / measured - 1): the median and 90th percentile of their size and the signed median, by
engine, GPU, model and concurrency band, with how many runs it skipped and why.

    python benchmarks/serving_measured.py                      # development part, H100/H200 MoE runs
    python benchmarks/serving_measured.py --part held_out      # the quoting part: the shipped model's errors
    python benchmarks/serving_measured.py --json runs.json     # every run's figures as well
    python benchmarks/serving_measured.py --part held_out --errors validation/serving_run_errors.json
                                                               # each run's errors only: plan --serve's --margin

Develop on the development part only; the held-out part is read to quote the shipped model, never to change it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from moesim.validation.measured_runs import GPUS, MeasuredRun, read_runs, scenario_document, skip_reason


def serve(run: MeasuredRun) -> dict:
    """moesim's mean TTFT and TPOT (ms) for `run`, or why moesim could not serve it (`unserved`: its error's
    message, e.g. a deployment that does not fit as moesim sizes its memory), so that one such run is counted
    with its reason instead of stopping the benchmark."""
    from moesim.errors import MoesimError
    from moesim.scenario import Scenario
    from moesim.serving.simulate import simulate_serving

    try:
        result = simulate_serving(Scenario.model_validate(scenario_document(run)))
    except MoesimError as error:
        return {"unserved": str(error).split(";")[0]}
    return {
        "ttft_ms": float(np.mean(result.ttft_samples_s)) * 1e3,
        "tpot_ms": float(np.mean(result.tpot_samples_s)) * 1e3,
    }


def errors_line(label: str, rows: list[dict]) -> str:
    """`label`, runs, then TPOT and TTFT: median |error|, p90 |error|, signed median (percent)."""
    cells = [f"{label:<24.24}", f"{len(rows):>4}"]
    for figure in ("tpot", "ttft"):
        signed = np.array([row[f"{figure}_error"] for row in rows])
        cells += [
            f"{np.median(np.abs(signed)):>5.0%}",
            f"{np.percentile(np.abs(signed), 90):>5.0%}",
            f"{np.median(signed):>+6.0%}",
        ]
    return " ".join(cells)


def table(rows: list[dict]) -> list[str]:
    """Errors over all runs, then by engine, GPU, model and concurrency band (fits 80 columns)."""
    head = f"{'':<24} {'runs':>4} {'TPOT median p90 signed':>19} {'TTFT median p90 signed':>19}"
    lines = [head, errors_line("all", rows)]
    for key in ("engine", "system", "model", "band"):
        lines.append(f"by {key}:")
        for value in sorted({row[key] for row in rows}):
            lines.append(errors_line(f"  {value}", [row for row in rows if row[key] == value]))
    return lines


def side_by_side(rows: list[dict]) -> list[str]:
    """moesim beside aiconfigurator on the runs both served: median and p90 of the error's size, by engine, GPU,
    model and concurrency band (fits 80 columns)."""
    both = [row for row in rows if "peer_tpot_error" in row]

    def line(label: str, group: list[dict]) -> str:
        cells = [f"{label:<20.20}", f"{len(group):>4}"]
        for figure in ("tpot", "ttft"):
            for who in ("", "peer_"):
                sizes = np.abs([row[f"{who}{figure}_error"] for row in group])
                cells.append(f"{np.median(sizes):>5.0%} {np.percentile(sizes, 90):>5.0%}")
        return " ".join(cells)

    lines = [
        f"moesim beside aiconfigurator on {len(both)} runs both served ({len(rows) - len(both)} it could not):",
        f"{'':<20} {'runs':>4} {'TPOT moesim':>11} {'aiconfig.':>11} {'TTFT moesim':>11} {'aiconfig.':>11}",
        f"{'':<20} {'':>4}" + "   med   p90" * 4,
        line("all", both),
    ]
    for key in ("engine", "system", "model", "band"):
        lines.append(f"by {key}:")
        for value in sorted({row[key] for row in both}):
            lines.append(line(f"  {value}", [row for row in both if row[key] == value]))
    return lines


def write_markdown(path: str, part: str, argv: list[str], shown: list[str]) -> None:
    """The printed tables as a Markdown page: what made them, when, from which commit."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"# moesim against the given file's measured serving runs ({part} part)",
        "",
        f"Written by `python benchmarks/serving_measured.py {' '.join(argv)}` at commit {commit or '(unknown)'} on "
        f"{time.strftime('%Y-%m-%d')}. Errors are moesim / measured - 1 (aiconfigurator's likewise) for each run's "
        "mean TTFT and TPOT; median and 90th percentile of their size and the signed median. The runs: "
        "`../shared/serving-measurements/aiconfigurator-silicon-given.csv`, split by "
        "`validation/held_out/serving_runs.json`"
        + (
            ": the held-out part, never used to build or tune moesim."
            if part == "held_out"
            else ": the part moesim is developed on (these figures are not its accuracy)."
        ),
        "",
        "```",
        *shown,
        "```",
        "",
    ]
    Path(path).write_text("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("development", "held_out"), default="development")
    parser.add_argument("--jobs", type=int, default=2, help="processes serving runs side by side")
    parser.add_argument("--limit", type=int, default=0, help="serve only the first N runs (0: all)")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--errors", help="write each run's id, group, engine and TTFT/TPOT errors here (JSON)")
    parser.add_argument("--peer", action="store_true", help="also serve the runs through aiconfigurator")
    parser.add_argument("--markdown", help="write the tables printed to this Markdown file (with the command)")
    args = parser.parse_args(argv)
    runs = [run for run in read_runs(args.part) if run.moe and run.system in GPUS]
    reasons = Counter(skip_reason(run) for run in runs)
    served = [run for run in runs if skip_reason(run) is None]
    if args.limit:
        served = served[: args.limit]
    shown: list[str] = []

    def show(text: str) -> None:
        print(text, flush=True)
        shown.append(text)

    show(f"{args.part} part: {len(runs)} H100/H200 MoE runs; {len(served)} served; skipped:")
    for reason, count in reasons.most_common():
        if reason is not None:
            show(f"  {count:>4}  {reason}")
    started, rows, unserved = time.time(), [], Counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        for index, (run, figures) in enumerate(zip(served, pool.map(serve, served)), 1):
            if index % 10 == 0 or index == len(served):
                print(f"  served {index}/{len(served)} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
            if "unserved" in figures:
                unserved[f"{run.group}: {figures['unserved']}"] += 1
                continue
            rows.append(
                {
                    **asdict(run),
                    "model": run.model_name,
                    "band": run.band,
                    "group": run.group,
                    **{f"moesim_{key}": value for key, value in figures.items()},
                    "ttft_error": figures["ttft_ms"] / run.ttft_ms - 1,
                    "tpot_error": figures["tpot_ms"] / run.tpot_ms - 1,
                }
            )
    for reason, count in unserved.most_common():
        show(f"  {count:>4}  not served, {reason}")
    single = [row for row in rows if row["group"] == "single-node"]
    show("single-node runs (the bar: TPOT median <= 8%, p90 <= 20%; TTFT median <= 15%, p90 <= 40%):")
    show("\n".join(table(single)))
    for group in ("multi-node", "disaggregated"):
        members = [row for row in rows if row["group"] == group]
        if members:
            show(f"{group} runs (no bar yet):")
            show(errors_line("all", members))
    if args.peer:
        from aiconfigurator_peer import estimates

        compared = {row["id"] for row in rows}  # the runs moesim served: aiconfigurator is set beside those only
        peer = estimates([asdict(run) for run in served if run.id in compared], args.jobs)
        for row in rows:
            found = peer.get(row["id"], {})
            if "tpot_ms" in found and found["tpot_ms"] > 0:
                row["peer_ttft_ms"], row["peer_tpot_ms"] = found["ttft_ms"], found["tpot_ms"]
                row["peer_ttft_error"] = found["ttft_ms"] / row["ttft_ms"] - 1
                row["peer_tpot_error"] = found["tpot_ms"] / row["tpot_ms"] - 1
        show("\n".join(side_by_side(single)))
    if args.markdown:
        write_markdown(args.markdown, args.part, argv if argv is not None else sys.argv[1:], shown)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    if args.errors:
        write_errors(args.errors, args.part, argv if argv is not None else sys.argv[1:], rows)
    return 0


def write_errors(path: str, part: str, argv: list[str], rows: list[dict]) -> None:
    """Each served run's errors (moesim / measured - 1 of its mean TTFT and TPOT) with what made them: what
    `plan --serve --margin` reads (`moesim.serving.checked.held_out_margin`); no measured figure is copied."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    keys = ("id", "group", "engine", "system", "concurrency", "ttft_error", "tpot_error")
    document = {
        "written_by": f"python benchmarks/serving_measured.py {' '.join(argv)}",
        "commit": commit or "(unknown)",
        "date": time.strftime("%Y-%m-%d"),
        "part": part,
        "errors": "moesim / measured - 1 of each run's mean TTFT and TPOT",
        "runs": [{key: row[key] for key in keys} for row in rows],
    }
    Path(path).write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
