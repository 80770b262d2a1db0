"""`moesim sweep`, `plan` and `report`: many scenarios, the cheapest cluster, and the sizing report."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from moesim.cli.common import (
    SET_HELP,
    _interrupt,
    app,
    console,
    fit_columns,
    output_file,
    print_json,
    print_table,
    progress_bar,
    user_errors_exit_2,
    warn_model_notes,
)
from moesim.cli.plan_serving import plan_serving_command, serving_options
from moesim.errors import MoesimError


@app.command()
@user_errors_exit_2
def sweep(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    params: List[str] = typer.Option(
        [], "--param", "-p", help="PATH=V1,V2,... to sweep (repeatable; default: the file's sweep section)."
    ),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Local worker processes (default: sweep.workers)."
    ),
    store: Optional[Path] = typer.Option(None, "--store", help="Results store, SQLite (default: sweep.store)."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run on Ray: 'local' starts one here, or give a cluster address."
    ),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Export this sweep's results to CSV."),
    parquet_path: Optional[Path] = typer.Option(
        None, "--parquet", help="Export this sweep's results to Parquet (needs pyarrow)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the points stored with an error again."),
) -> None:
    """Simulate every combination of the parameters; results go to the store as each point finishes.

    Exits 1 when no point of the sweep ran without an error."""

    from moesim.planning.grid import parse_param
    from moesim.planning.store import ResultsStore, check_store, export_csv, export_parquet
    from moesim.planning.sweep import run_sweep, sweep_grid
    from moesim.scenario import apply_overrides, read_document, scenario_from_dict

    output_file(csv_path, "--csv")
    output_file(parquet_path, "--parquet")
    document = apply_overrides(read_document(scenario), overrides)
    _note_model(document)
    grid_params = dict(parse_param(text) for text in params) or None
    sweep_grid(document, grid_params)  # a bad value stops here, before the progress bar and the store
    check_store(store or scenario_from_dict(document).sweep.store)  # so does a damaged or foreign store
    with progress_bar("sweep", to_stderr=True, transient=as_json) as progress:
        task = progress.add_task("points", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        previous = signal.signal(signal.SIGTERM, _interrupt)  # a polite kill stops like Ctrl-C
        try:
            summary = run_sweep(
                document,
                grid_params,
                store,
                workers,
                ray_address=None if ray in (None, "local") else ray,
                use_ray=ray is not None,
                on_progress=on_progress,
                retry_failed=retry_failed,
            )
        except KeyboardInterrupt:
            progress.stop()
            typer.echo(
                "interrupted: finished points are kept in the store, the rest cancelled; run the same command "
                "again to resume",
                err=True,
            )
            raise typer.Exit(code=130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
    with ResultsStore(summary.store) as results:
        rows = results.rows(summary.sweep_id)
    if csv_path:
        export_csv(rows, csv_path)
    if parquet_path:
        export_parquet(rows, parquet_path)
    failed = [row for row in rows if row["status"] != "ok"]
    if as_json:
        print_json(rows)
    else:
        console.print(
            f"{summary.total_points} points: {summary.already_done} already in {summary.store}, {summary.ran} "
            "simulated now; "
            f"{len(rows) - len(failed)} ran, {len(failed)} failed"
            + (" (--retry-failed runs them again)" if failed else "")
        )
        swept = list(grid_params or read_document(scenario).get("sweep", {}).get("params", {}))
        # a swept path by its last name (the full paths are said above the table)
        heads = [path.split(".")[-1] for path in swept]
        heads = heads if len(set(heads)) == len(heads) else list(swept)
        if swept:
            console.print("swept: " + ", ".join(swept))
        ok = sorted((row for row in rows if row["status"] == "ok"), key=lambda row: row["step_time_s"])
        decoding = any(row.get("decode_step_s") for row in ok)  # inference: the figure a decode sweep compares
        cells = [
            {
                **{head: str(row.get(path)) for head, path in zip(heads, swept)},
                "step (s)": f"{row['step_time_s']:.4f}",
                **({"decode (ms)": f"{row['decode_step_s'] * 1e3:.3g}"} if decoding else {}),
                "tokens/s/GPU": f"{row['tokens_per_s_per_gpu']:,.0f}",
                "MFU": f"{row['mfu']:.1%}",
                "drops": f"{row['drop_rate']:.2%}",
                "memory (GB)": f"{row['memory_gb']:.1f}",
            }
            for row in ok
        ]
        columns = [*heads, "step (s)", *(["decode (ms)"] if decoding else []), "tokens/s/GPU", "MFU", "drops"]
        columns.append("memory (GB)")
        # a decode sweep keeps its decode step longest (its scenarios say to compare it)
        drop_order = ("memory (GB)", "MFU", "drops", *(("tokens/s/GPU", "step (s)") if decoding else ()))
        shown, dropped = fit_columns(columns, cells, console.width, drop_order)
        print_table("sweep results (fastest first)", shown, cells)
        if dropped:
            console.print(f"[dim]left out to fit {console.width} columns: {', '.join(dropped)} (--json has them)[/dim]")
        if failed:
            errors = Table(title="failed points")
            for column in [*swept, "error"]:
                errors.add_column(column, justify="left" if column == "error" else "right")
            for row in failed:
                errors.add_row(*[str(row.get(path)) for path in swept], escape(str(row["error"])))
            console.print(errors)
    if rows and len(failed) == len(rows):
        raise typer.Exit(code=1)


PLAN_COLUMNS = (
    "GPUs",
    "GPU",
    "TP",
    "PP",
    "EP",
    "rule",
    "cf",
    "step (s)",
    "tokens/s",
    "drops",
    "memory (GB)",
    "GPU-h/M tokens",
    "$/h",
    "$/M tokens",
)
PLAN_DROP_ORDER = ("GPU-h/M tokens", "memory (GB)", "$/h", "drops", "rule", "cf")
"""What a narrow terminal leaves out first: figures the others imply or the JSON output keeps."""


def _plan_row(option: Any) -> dict[str, str]:
    c = option.candidate
    values = (
        str(option.gpus),
        c.gpu,
        str(c.tp_size),
        str(c.pp_size),
        str(c.ep_size),
        c.strategy,
        "dropless" if c.capacity_factor is None else str(c.capacity_factor),
        f"{option.step_time_s:.3f}",
        f"{option.tokens_per_s:,.0f}",
        f"{option.drop_rate:.2%}",
        f"{option.memory_gb:.0f}",
        f"{option.gpu_hours_per_million_tokens:.4g}",
        f"{option.dollars_per_hour:,.0f}",
        f"{option.dollars_per_million_tokens:.4g}",
    )
    return dict(zip(PLAN_COLUMNS, values))


@app.command("plan")
@user_errors_exit_2
def plan_command(
    scenario: Path = typer.Argument(..., help="Scenario file: the model, workload and global batch to plan for."),
    target_tokens_per_s: Optional[float] = typer.Option(
        None, "--target-tokens-per-s", min=0, help="Training: throughput to reach (tokens/s)."
    ),
    serve: bool = typer.Option(False, "--serve", help="Plan serving: the scenario's requests at --request-rate."),
    request_rate: Optional[float] = typer.Option(
        None, "--request-rate", help="--serve: requests/s to serve (default: serving.request_rate)."
    ),
    ttft: float = typer.Option(2.0, "--ttft", help="--serve: 90th-percentile time to first token to meet (s)."),
    tpot: float = typer.Option(0.05, "--tpot", help="--serve: 90th-percentile time per output token to meet (s)."),
    max_load: float = typer.Option(
        0.95,
        "--max-load",
        min=0.01,
        max=1.0,
        help="--serve: highest load a plan may run at, the rate over what its engines serve at their largest "
        "steady batch (e.g. 0.7 leaves 30% headroom for bursts).",
    ),
    gpu: str = typer.Option("H100-SXM", "--gpu", help="GPU types to consider, comma-separated."),
    max_gpus: int = typer.Option(512, "--max-gpus", min=1, help="Largest cluster to consider, GPUs."),
    max_drop_rate: float = typer.Option(
        1.0, "--max-drop-rate", min=0, max=1, help="Largest share of token-expert pairs a plan may drop (0-1)."
    ),
    strategies: Optional[str] = typer.Option(
        None, "--strategies", help="Routing rules to consider, comma-separated (default: the scenario's)."
    ),
    capacity_factors: Optional[str] = typer.Option(
        None, "--capacity-factors", help="e.g. null,1.0,1.25 (default: the scenario's)."
    ),
    prices: Optional[str] = typer.Option(None, "--price", help="Dollars per GPU-hour, e.g. H100-SXM=2.5,H200=3.5."),
    margin: Optional[str] = typer.Option(
        None,
        "--margin",
        help="--serve: size for TTFT and TPOT as much slower than predicted as the held-out measured runs were at "
        "this percentile (p50, p90): the plan a buyer can count on; the answer without it is printed beside.",
    ),
    power_price: Optional[float] = typer.Option(
        None,
        "--power-price",
        help="Dollars per kWh: each GPU's board power for the whole hour is added to its GPU-hour price (serving: "
        "default serving.power_price_per_kwh).",
    ),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    deploy: Optional[str] = typer.Option(
        None,
        "--deploy",
        help="--serve: the engine whose launch commands to print (trtllm, sglang or vllm; default: the scenario's "
        "serving.engine, else sglang). Training plans print Megatron-Core's arguments.",
    ),
) -> None:
    """Search GPU type, nodes, TP/PP/EP, routing and capacity factor for the cheapest plan that meets the target."""

    from moesim.planning.deploy_training import megatron_deployment
    from moesim.planning.training import option_scenario
    from moesim.planning.training import plan as run_plan
    from moesim.scenario import apply_overrides, parse_override, read_document

    document = apply_overrides(read_document(scenario), overrides)
    _note_model(document)
    quantile = serving_options(serve, deploy, margin)  # --deploy and --margin go with --serve
    if power_price is not None and power_price < 0:
        raise MoesimError(f"--power-price: {power_price:g} is negative; give dollars per kWh, e.g. 0.12")
    if serve == (target_tokens_per_s is not None):
        raise MoesimError("plan: give --target-tokens-per-s (training) or --serve (serving), one of the two")
    if target_tokens_per_s is not None and target_tokens_per_s <= 0:
        raise MoesimError(f"--target-tokens-per-s: {target_tokens_per_s:g} tokens/s is no target; give a rate above 0")
    price_table = {}
    for item in (prices or "").split(","):
        if item.strip():
            name, _, value = item.partition("=")
            try:
                price_table[name.strip()] = float(value)
            except ValueError:
                raise MoesimError(f"--price '{item}': expected GPU=DOLLARS, e.g. H100-SXM=2.5") from None
    if serve:
        gpus = [g.strip() for g in gpu.split(",")]
        plan_serving_command(
            document,
            request_rate,
            ttft,
            tpot,
            gpus,
            max_gpus,
            price_table,
            as_json,
            max_load,
            deploy,
            power_price,
            quantile,
        )
        return
    assert target_tokens_per_s is not None
    factors = None
    if capacity_factors:
        factors = [parse_override(f"x={value}")[1] for value in capacity_factors.split(",")]
    with progress_bar("{task.description}", to_stderr=True, transient=as_json) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = run_plan(
            document,
            target_tokens_per_s,
            [g.strip() for g in gpu.split(",")],
            max_gpus,
            max_drop_rate,
            strategies.split(",") if strategies else None,
            factors,
            price_table,
            on_progress=on_progress,
            kwh_price=power_price or 0.0,
        )
    best = result.best_achievable
    deployment = megatron_deployment(option_scenario(document, result.options[0])) if result.options else None
    if as_json:
        print_json(
            {
                "deploy": deployment.as_dict() if deployment else None,
                "options": [o.as_dict() for o in result.options],
                "pareto": [o.as_dict() for o in result.pareto],
                "harsher": [o.as_dict() for o in result.harsher],
                "evaluated": result.evaluated,
                "feasible": result.feasible,
                "best_achievable": best.as_dict() if best else None,
                "best_per_gpu": {gpu: option.as_dict() for gpu, option in result.best_per_gpu.items()},
            }
        )
        if not result.options:
            raise typer.Exit(code=1)
        return
    if not result.options:
        reach = (
            f"the fastest layout within the limits reaches {best.tokens_per_s:,.0f} tokens/s "
            f"({best.gpus} x {best.candidate.gpu}, TP {best.candidate.tp_size} PP {best.candidate.pp_size} "
            f"EP {best.candidate.ep_size}, {best.candidate.strategy})"
            if best
            else "no layout fits in memory"
        )
        console.print(
            f"no plan: none of {result.evaluated} layouts reaches {target_tokens_per_s:,.0f} tokens/s; {reach}. "
            "Raise --max-gpus, add GPU types, or lower the target."
        )
        raise typer.Exit(code=1)
    top = result.options[0]
    console.print(
        f"[bold]plan:[/bold] {top.gpus} x {top.candidate.gpu}, TP {top.candidate.tp_size} PP {top.candidate.pp_size} "
        f"EP {top.candidate.ep_size}, {top.candidate.strategy}: {top.tokens_per_s:,.0f} tokens/s "
        f"(target {target_tokens_per_s:,.0f}), ${top.dollars_per_million_tokens:.4g} per million tokens"
    )
    console.print(
        f"{result.evaluated} layouts simulated in fast mode, {result.feasible} meet the target; "
        "finalists confirmed in full mode:"
    )
    others = [option for gpu, option in result.best_per_gpu.items() if gpu != top.candidate.gpu]
    tables = (
        ("best plans (full timeline)", result.options),
        ("the cheapest plan of each other GPU searched (full timeline)", others),
        ("Pareto front: cost per hour against step time (fast)", result.pareto),
        ("sensitivity: skew +0.5 and NICs at half speed", result.harsher),
    )
    rows_by_table = [(title, [_plan_row(option) for option in options]) for title, options in tables]
    every_row = [row for _, rows in rows_by_table for row in rows]
    # columns that say the same for every layout are said once; a narrow terminal drops the least telling ones
    constant = {name for name in PLAN_COLUMNS if every_row and len({row[name] for row in every_row}) == 1}
    constant &= {"GPU", "rule", "cf", "TP", "PP"}
    if constant:
        console.print(
            "every layout: " + ", ".join(f"{name} {every_row[0][name]}" for name in PLAN_COLUMNS if name in constant)
        )
    shown, dropped = fit_columns(
        [name for name in PLAN_COLUMNS if name not in constant], every_row, console.width, PLAN_DROP_ORDER
    )
    for title, rows in rows_by_table:
        if rows or title == tables[0][0]:  # a table with nothing to show (one GPU searched: no other's) is left out
            print_table(title, shown, rows)
    if dropped:
        console.print(
            f"[dim]left out to fit {console.width} columns: {', '.join(dropped)} (--json has every figure)[/dim]"
        )
    console.print(
        "[dim]prices: $/GPU-hour assumptions (moesim.planning.prices.DEFAULT_PRICE_PER_GPU_HOUR) unless --price "
        "is given"
        + (f"; with power: each GPU's board power at ${power_price:g}/kWh for the whole hour" if power_price else "")
        + "[/dim]"
    )
    assert deployment is not None
    console.print(escape("\n".join(deployment.lines(min(console.width, 100) - 2))), soft_wrap=True)


def _note_model(document: dict) -> None:
    """The import notes of a document's model, as warnings, before a search or sweep starts."""
    from moesim.scenario import scenario_from_dict

    warn_model_notes(scenario_from_dict(document).model)
