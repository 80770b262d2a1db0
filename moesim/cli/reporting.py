"""`moesim report`: the sizing report of a scenario, or of a sweep's results store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from moesim.cli.common import SET_HELP, app, console, output_folder, user_errors_exit_2


@app.command()
@user_errors_exit_2
def report(
    source: Path = typer.Argument(..., help="Scenario file to size, or a sweep's results store (.sqlite)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.html, report.md and the plots."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    fast: bool = typer.Option(False, "--fast", help="Fast network mode for the headline run."),
    sweep_id: Optional[str] = typer.Option(
        None, "--sweep", help="Which sweep of a results store (default: the latest)."
    ),
) -> None:
    """Write a cluster sizing report (self-contained HTML with plots, and Markdown)."""
    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.planning.report import read_sweep, write_report, write_results_report

    results = source.suffix.lower() in (".sqlite", ".db", ".sqlite3")
    if results:
        read = read_sweep(source, sweep_id)  # nothing to report on stops here, before the folder is made
    else:
        loaded = load_scenario(source, overrides)
    output_folder(out, "--out")
    with console.status("simulating and plotting ...", spinner="dots"):
        if results:
            html_path, md_path = write_results_report(source, out, sweep_id, read)
        else:
            html_path, md_path = write_report(loaded, out, fast)
    console.print(f"report written to {html_path} and {md_path}")
