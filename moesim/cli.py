"""The `moesim` command line: presets, scenario checking and the JSON Schema.

Every command that takes a scenario accepts `--set a.b=c` overrides. A problem with the
input prints one line on stderr and exits with code 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moesim import units
from moesim.errors import MoesimError
from moesim.sim.sources import grade, phases_by_source

app = typer.Typer(
    name="moesim",
    help="Simulation-driven routing and systems planner for Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="Published model and GPU presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
profiles_app = typer.Typer(help="GPU cost-model profiles: measured, derived, or datasheet.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")

def _console_width() -> Optional[int]:
    """COLUMNS when set (also when piped), the terminal's own width, else 100 for a file or pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else 100


console = Console(width=_console_width())
Command = TypeVar("Command", bound=Callable[..., Any])

ROUTE_SCORE_BYTES = 4 * 2**30
"""The most router-score memory `moesim route` builds (a sizing question needs far fewer tokens)."""
SET_HELP = "Override a scenario field, e.g. --set routing.top_k=2 (repeatable)."


def user_errors_exit_2(command: Command) -> Command:
    """Turn a MoesimError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MoesimError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def output_file(path: Optional[Path], option: str) -> Optional[Path]:
    """A file the command will write, checked before any work: not a folder, in a folder that exists."""
    if path is None:
        return None
    if path.is_dir():
        raise MoesimError(f"{option}: {path} is a folder; give a file name, e.g. {path / 'out.json'}")
    if not path.parent.is_dir():
        raise MoesimError(f"{option}: the folder {path.parent} does not exist; create it or choose another path")
    return path


def output_folder(path: Path, option: str) -> Path:
    """A folder the command will write into (created if missing), checked before any work."""
    if path.exists() and not path.is_dir():
        raise MoesimError(f"{option}: {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MoesimError(f"{option}: cannot create the folder {path} ({error.strerror})") from None
    return path


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def print_json(data: Any) -> None:
    """JSON on stdout for machines (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        from moesim import __version__

        typer.echo(f"moesim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """moesim: how fast is an MoE step on this cluster, how many tokens drop, and what fits."""


# ---------------------------------------------------------------- profiles
@profiles_app.command("show")
@user_errors_exit_2
def profiles_show(gpu: str = typer.Argument(..., help="GPU preset, e.g. H200."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """What the GPU's cost model rests on, part by part, with the error measured for each."""
    from moesim.cluster.hardware import gpu_preset
    from moesim.sim.compute import CostModel

    cost = CostModel.for_gpu(gpu_preset(gpu))
    if as_json:
        print_json({"gpu": cost.name, "source": cost.source, "parts": dict(cost.sources)})
        return
    table = Table(title=f"{cost.name}: {cost.source}")
    table.add_column("part")
    table.add_column("basis")
    table.add_column("source and error (|predicted / measured - 1|)")
    for part, label in cost.sources:
        table.add_row(part, grade(label), label)
    console.print(table)


@profiles_app.command("build")
@user_errors_exit_2
def profiles_build() -> None:
    """Fit the shipped profiles to the measured tables (moesim/profiles/tables) and write moesim/profiles/shipped."""
    from moesim.profiles.shipping import build_shipped

    with console.status("fitting ...", spinner="dots") as status:
        written = build_shipped(on_step=lambda name: status.update(f"fitting {name} ..."))
    for path in written:
        console.print(f"wrote {path}")


# ---------------------------------------------------------------- presets
@presets_app.command("list")
@user_errors_exit_2
def presets_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List model and GPU presets."""
    from moesim.cluster.hardware import gpu_preset, gpu_preset_names
    from moesim.models.accounting import active_params, total_params
    from moesim.models.presets import model_preset, model_preset_names

    models = [model_preset(name) for name in model_preset_names()]
    gpus = [gpu_preset(name) for name in gpu_preset_names()]
    if as_json:
        print_json(
            {
                "models": [
                    {
                        "name": spec.name,
                        "total_params": total_params(spec),
                        "active_params": active_params(spec),
                        "num_experts": spec.num_experts,
                        "top_k": spec.top_k,
                    }
                    for spec in models
                ],
                "gpus": [gpu.model_dump() for gpu in gpus],
            }
        )
        return
    table = Table(title="Model presets (moesim presets show NAME)")
    for column in ("name", "total params", "active params", "experts", "shared", "top-k", "MoE layers"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for spec in models:
        table.add_row(
            spec.name,
            units.params(total_params(spec)),
            units.params(active_params(spec)),
            str(spec.num_experts),
            str(spec.num_shared_experts),
            str(spec.top_k),
            str(spec.num_moe_layers),
        )
    console.print(table)
    gpu_table = Table(title="GPU presets (moesim presets show --gpu NAME)")
    for column in ("name", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM GB", "HBM TB/s", "scale-up GB/s", "NIC Gb/s"):
        gpu_table.add_column(column, justify="left" if column == "name" else "right")
    for gpu in gpus:
        gpu_table.add_row(
            gpu.name,
            f"{gpu.peak_bf16_tflops:g}",
            f"{gpu.peak_fp8_tflops:g}" if gpu.peak_fp8_tflops else "-",
            f"{gpu.hbm_gb:g}",
            f"{gpu.hbm_tb_per_s:g}",
            f"{gpu.scale_up_gb_per_s:g}",
            f"{gpu.nic_gbps:g}",
        )
    console.print(gpu_table)


@presets_app.command("show")
@user_errors_exit_2
def presets_show(
    name: Optional[str] = typer.Argument(None, help="Model preset name, e.g. mixtral-8x7b."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Show a GPU preset instead, e.g. H100-SXM."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=1,
                                          help="Sequence length for FLOPs (default: 4,096 or the model's context if shorter)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model preset's architecture and accounting, or a GPU preset."""
    if gpu is not None:
        _show_gpu(gpu, as_json)
        return
    if name is None:
        raise MoesimError("name a model preset (moesim presets show mixtral-8x7b) or a GPU (--gpu H100-SXM)")
    from moesim.models.accounting import summarize
    from moesim.models.presets import PUBLISHED, model_preset

    spec = model_preset(name)
    summary = summarize(spec, seq_len or min(4096, spec.max_seq_len))
    published = PUBLISHED.get(spec.name)
    if as_json:
        print_json(
            {
                **summary.as_dict(),
                "source": spec.source,
                "published": published.__dict__ if published else None,
                "architecture": spec.model_dump(),
            }
        )
        return
    console.print(_model_table(spec, summary, published))


def _model_table(spec: Any, summary: Any, published: Any) -> Table:
    """The accounting of one model, each figure with its unit and where it comes from."""
    table = Table(title=f"{spec.name}  ({spec.source})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("derived from")
    published_total = f"published {units.params(published.total_params)}" if published else "architecture"
    published_active = (
        f"published {units.params(published.active_params)}" if published and published.active_params else "architecture"
    )
    rows = [
        ("total parameters", units.params(summary.total_params), published_total),
        ("active parameters / token", units.params(summary.active_params), published_active),
        ("  without input embedding", units.params(summary.active_params_without_input_embedding), "architecture"),
        ("routed-expert parameters", units.params(summary.expert_params), "architecture"),
        ("experts (routed + shared)", f"{spec.num_experts} + {spec.num_shared_experts}", "config"),
        ("top-k", str(spec.top_k), "config"),
        ("MoE / dense layers", f"{summary.num_moe_layers} / {summary.num_dense_layers}", "config"),
        (f"forward FLOPs / token @ {summary.seq_len} tokens", units.flops(summary.flops_per_token), "2 x active + attention"),
        ("training FLOPs / token", units.flops(summary.training_flops_per_token), "3 x forward"),
        ("weights + grads + optimizer", units.byte_size(summary.training_state_bytes), "bf16 / bf16 / fp32 Adam, 16 B/param"),
        ("activations / token (no recompute)", units.byte_size(summary.activation_bytes_per_token), "Korthikanti et al. 2022"),
        ("KV cache / token (bf16)", units.byte_size(summary.kv_cache_bytes_per_token), spec.attention_type.upper()),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _show_gpu(name: str, as_json: bool) -> None:
    from moesim.cluster.hardware import gpu_preset
    from moesim.sim.compute import CostModel

    gpu = gpu_preset(name)
    if as_json:
        print_json(gpu.model_dump())
        return
    table = Table(title=f"{gpu.name}  ({gpu.source})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("peak bf16 (dense)", f"{gpu.peak_bf16_tflops:g} TFLOP/s"),
        ("peak fp8 (dense)", f"{gpu.peak_fp8_tflops:g} TFLOP/s" if gpu.peak_fp8_tflops else "not supported"),
        ("HBM capacity", f"{gpu.hbm_gb:g} GB"),
        ("HBM bandwidth", f"{gpu.hbm_tb_per_s:g} TB/s"),
        ("scale-up bandwidth (one direction)", f"{gpu.scale_up_gb_per_s:g} GB/s"),
        ("NIC line rate", f"{gpu.nic_gbps:g} Gb/s"),
        ("board power", f"{gpu.tdp_watts:g} W" if gpu.tdp_watts else "-"),
        ("compute cost model", CostModel.for_gpu(gpu).source + " (moesim profiles show)"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ---------------------------------------------------------------- scenarios
@app.command()
@user_errors_exit_2
def check(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved scenario as JSON."),
) -> None:
    """Validate a scenario and print it with every default filled in."""
    import yaml

    from moesim.scenario import load_scenario

    from moesim.sim.memory import check_fits, memory_per_gpu
    from moesim.sim.plan import StagePlan

    resolved = load_scenario(scenario, overrides)
    check_fits(memory_per_gpu(resolved, StagePlan(resolved)), resolved.workload.mode == "training")  # as `run` does
    data = resolved.model_dump(mode="json")
    if as_json:
        print_json(data)
        return
    typer.echo(f"# {scenario}: valid ({resolved.cluster.world_size} GPUs, model {resolved.model.name})")
    typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


@app.command()
@user_errors_exit_2
def route(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    strategies: List[str] = typer.Option([], "--strategy", "-s", help="Routing rule(s) to compare (repeatable; default: the scenario's)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    layers: int = typer.Option(1, "--layers", min=1, help="MoE layers to route (synthetic scores)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", min=1, help="Tokens per layer (default: micro-batch x seq_len x ep_size)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Route the scenario's router scores under one or more rules and compare them."""
    from moesim.routing.from_scenario import compare_rules, scores_for_scenario
    from moesim.routing.names import ROUTING_STRATEGIES
    from moesim.errors import unknown_name_message
    from moesim.scenario import load_scenario

    resolved = load_scenario(scenario, overrides)
    chosen = list(strategies) or [resolved.routing.strategy]
    for name in chosen:
        if name not in ROUTING_STRATEGIES:
            raise MoesimError(f"--strategy: {unknown_name_message('routing rule', name, list(ROUTING_STRATEGIES))}")
    if tokens is not None and tokens * resolved.model.num_experts * layers * 4 > ROUTE_SCORE_BYTES:
        most = ROUTE_SCORE_BYTES // (resolved.model.num_experts * layers * 4)
        raise MoesimError(f"--tokens: {tokens:,} tokens x {resolved.model.num_experts} experts x {layers} layers of fp32 "
                          f"scores exceed {ROUTE_SCORE_BYTES / 2**30:.0f} GiB; use at most {most:,} tokens")
    scores = scores_for_scenario(resolved, layers=layers, num_tokens=tokens)
    reports = compare_rules(resolved, chosen, scores)
    if as_json:
        print_json([report.as_dict() for report in reports])
        return
    table = Table(
        box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
        title=f"{resolved.name}: {scores[0].num_tokens} tokens x {resolved.model.num_experts} experts, "
        f"top-{resolved.routing.top_k}, capacity factor {resolved.routing.capacity_factor or 'dropless'}, EP {resolved.parallelism.ep_size}"
    )
    rows = [{"rule": report.strategy, "layer": str(report.layer), "drop rate": f"{report.metrics.drop_rate:.2%}",
             "max / mean load": f"{report.metrics.load_imbalance:.3f}", "no expert": str(report.metrics.tokens_without_expert),
             "affinity": f"{report.metrics.affinity_captured:.3f}", "dispatch": units.byte_size(report.metrics.dispatch_bytes),
             "across nodes": units.byte_size(report.metrics.bytes_across_nodes),
             "nodes / token": f"{report.metrics.mean_nodes_per_token:.2f}", "routing time": f"{report.routing_seconds * 1e3:.1f} ms"}
            for report in reports]
    # columns that say nothing here are left out: one layer, one node
    unused = {"layer"} if layers == 1 else set()
    if all(report.metrics.bytes_across_nodes == 0 for report in reports):
        unused |= {"across nodes", "nodes / token"}
    for column in (name for name in rows[0] if name not in unused):
        table.add_column(column, justify="left" if column == "rule" else "right", no_wrap=column == "rule",
                         min_width=max(len(word) for word in column.split()))
    for row in rows:
        table.add_row(*[value for name, value in row.items() if name not in unused])
    console.print(table)
    console.print("dispatch bytes: one copy of the hidden vector per distinct destination rank (activation dtype); "
                  "affinity: router probability served / unconstrained top-k.")


@app.command()
@user_errors_exit_2
def run(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the StepResult as JSON."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write the simulated timeline as Chrome trace / Perfetto JSON."),
) -> None:
    """Simulate one step of the scenario and print where the time goes."""
    from moesim.scenario import load_scenario
    from moesim.sim.step import simulate

    output_file(trace, "--trace")
    resolved = load_scenario(scenario, overrides)
    if trace is not None and resolved.simulation.network_mode != "full":
        raise MoesimError("--trace: a timeline needs simulation.network_mode=full (the fast mode keeps per-rank "
                          "clocks, not events); drop --trace or set simulation.network_mode=full")
    with console.status(f"simulating {resolved.name} on {resolved.cluster.world_size} GPUs ...", spinner="dots"):
        result = simulate(resolved)
    if trace is not None:
        from moesim.sim.chrome_trace import write_chrome_trace

        write_chrome_trace(result, trace)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(step_table(result))
    console.print(summary_table(result))
    print_sources(result)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if trace is not None:
        console.print(f"timeline written to {trace} (open in ui.perfetto.dev)")


def step_table(result: Any) -> Table:
    """Time per phase with a bar, largest first."""
    title = "busiest stage, all micro-batches" if result.mode == "training" else "prefill + decode"
    table = Table(title=f"{result.scenario}: time per phase ({title}, mean per rank)")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    table.add_column("basis")
    table.add_column("")
    total = sum(result.phase_seconds.values()) or 1.0
    for name, seconds in sorted(result.phase_seconds.items(), key=lambda item: -item[1]):
        share = seconds / total
        table.add_row(name, f"{seconds:.4f}", f"{share:.1%}", grade(result.sources.get(name, "assumed")),
                      "█" * max(1, round(share * 30)) if share > 0.002 else "")
    return table


def print_sources(result: Any) -> None:
    """Under the tables: what each basis means for this result (every distinct source, with its measured error)."""
    console.print("[bold]basis of the figures[/bold] (measured error: |predicted / measured - 1| on the tables)")
    for label, phases in phases_by_source(result.sources):
        console.print(escape(f"  [{grade(label)}] {', '.join(phases)}: {label}"))


def summary_table(result: Any) -> Table:
    """The step's headline figures, each with its unit."""
    table = Table(title="step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    memory = result.memory
    rows = [("step time", f"{result.step_time_s:.3f} s")]
    if result.mode == "training":
        busiest = max(range(len(result.stage_forward_s)),
                      key=lambda stage: result.stage_forward_s[stage] + result.stage_backward_s[stage])
        rows += [
            ("pipeline (incl. bubble)", f"{result.pipeline_s:.3f} s ({result.pipeline_bubble_s:.3f} s bubble)"),
            ("1F / 1B, one micro-batch, busiest stage",
             f"{result.stage_forward_s[busiest] * 1e3:,.1f} / {result.stage_backward_s[busiest] * 1e3:,.1f} ms"),
            ("gradient all-reduce (exposed)", f"{result.grad_allreduce_s:.3f} s ({result.grad_allreduce_exposed_s:.3f} s)"),
            ("optimizer step", f"{result.optimizer_s:.4f} s"),
            ("tokens per step", f"{result.tokens_per_step:,.0f}"),
        ]
    else:
        rows += [("prefill of the whole batch", f"{result.prefill_s:.3f} s"),
                 ("decode step (one token per sequence)", f"{result.decode_step_s * 1e3:.2f} ms")]
    counted = "tokens" if result.mode == "training" else "output tokens"
    rows += [
        (f"{counted} / s", f"{result.tokens_per_s:,.0f}"),
        (f"{counted} / s per GPU", f"{result.tokens_per_s_per_gpu:,.1f}"),
        ("MFU (model FLOPs / bf16 dense peak)", f"{result.mfu:.1%}"),
        *([("HFU (with recomputed FLOPs)", f"{result.hfu:.1%}")] if result.hfu > result.mfu * 1.0001 else []),
        ("drop rate", f"{result.drop_rate:.2%}"),
        ("expert load imbalance (max / mean)", f"{result.load_imbalance:.3f}"),
        ("bytes across nodes per step", units.byte_size(result.bytes_across_nodes_per_step)),
        ("peak memory per GPU", f"{memory['total_bytes'] / 1e9:.1f} GB of {memory['capacity_bytes'] / 1e9:.0f} GB"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
@user_errors_exit_2
def sweep(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    params: List[str] = typer.Option([], "--param", "-p", help="PATH=V1,V2,... to sweep (repeatable; default: the file's sweep section)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local worker processes (default: sweep.workers)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results store, SQLite (default: sweep.store)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'local' starts one here, or give a cluster address."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Export this sweep's results to CSV."),
    parquet_path: Optional[Path] = typer.Option(None, "--parquet", help="Export this sweep's results to Parquet (needs pyarrow)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the points stored with an error again."),
) -> None:
    """Simulate every combination of the parameters; results go to the store as each point finishes.

    Exits 1 when no point of the sweep ran without an error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.planning.grid import parse_param
    from moesim.planning.store import ResultsStore, export_csv, export_parquet
    from moesim.planning.sweep import run_sweep
    from moesim.scenario import apply_overrides, read_document

    output_file(csv_path, "--csv")
    output_file(parquet_path, "--parquet")
    document = apply_overrides(read_document(scenario), overrides)
    grid_params = dict(parse_param(text) for text in params) or None
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=as_json) as progress:
        task = progress.add_task("points", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        previous = signal.signal(signal.SIGTERM, _interrupt)  # a polite kill stops like Ctrl-C
        try:
            summary = run_sweep(
                document, grid_params, store, workers,
                ray_address=None if ray in (None, "local") else ray, use_ray=ray is not None, on_progress=on_progress,
                retry_failed=retry_failed,
            )
        except KeyboardInterrupt:
            progress.stop()
            typer.echo("interrupted: finished points are kept in the store, the rest cancelled; run the same command "
                       "again to resume", err=True)
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
            f"{summary.total_points} points: {summary.already_done} already in {summary.store}, {summary.ran} simulated now; "
            f"{len(rows) - len(failed)} ran, {len(failed)} failed"
            + (" (--retry-failed runs them again)" if failed else "")
        )
        swept = list(grid_params or read_document(scenario).get("sweep", {}).get("params", {}))
        table = Table(title="sweep results (fastest first)")
        for column in [*swept, "step time (s)", "tokens/s/GPU", "MFU", "drop rate", "memory (GB)"]:
            table.add_column(column, justify="right")
        ok = sorted((row for row in rows if row["status"] == "ok"), key=lambda row: row["step_time_s"])
        for row in ok:
            table.add_row(*[str(row.get(path)) for path in swept], f"{row['step_time_s']:.4f}",
                          f"{row['tokens_per_s_per_gpu']:,.0f}", f"{row['mfu']:.1%}", f"{row['drop_rate']:.2%}",
                          f"{row['memory_gb']:.1f}")
        console.print(table)
        if failed:
            errors = Table(title="failed points")
            for column in [*swept, "error"]:
                errors.add_column(column, justify="left" if column == "error" else "right")
            for row in failed:
                errors.add_row(*[str(row.get(path)) for path in swept], escape(str(row["error"])))
            console.print(errors)
    if rows and len(failed) == len(rows):
        raise typer.Exit(code=1)


@app.command()
@user_errors_exit_2
def execute(
    scenario: Path = typer.Argument(..., help="Scenario file; its model's MoE layer is run for real (use small models on CPU)."),
    ranks: int = typer.Option(2, "--ranks", min=1, help="Expert-parallel processes (gloo on CPU, NCCL on GPUs)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    tokens: Optional[int] = typer.Option(None, "--tokens", min=1, help="Tokens per rank (default: micro_batch_size x seq_len)."),
    warmup: int = typer.Option(2, "--warmup", min=0),
    repeats: int = typer.Option(5, "--repeats", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the per-rank phase times as JSON."),
    trace: Optional[Path] = typer.Option(None, "--save-trace", help="Save the router scores as a trace file (.npz)."),
) -> None:
    """Run one MoE layer for real, expert-parallel over torch.distributed, and time each phase."""
    from moesim.executor.launch import execute as run_execute
    from moesim.scenario import load_scenario

    output_file(out, "--out")
    output_file(trace, "--save-trace")
    resolved = load_scenario(scenario, overrides)
    if resolved.model.num_experts % ranks:
        raise MoesimError(f"--ranks: num_experts ({resolved.model.num_experts}) is not divisible by {ranks}")
    with console.status(f"running {resolved.model.name}'s MoE layer on {ranks} ranks ...", spinner="dots"):
        report = run_execute(resolved, ranks, tokens, warmup, repeats, str(trace) if trace else None)
    if out:
        out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"{report['scenario']}: measured on {report['device']} ({report['backend']}, {ranks} ranks, "
                        f"{report['tokens_per_rank']} tokens per rank), median of {repeats}")
    table.add_column("phase")
    for rank in range(ranks):
        table.add_column(f"rank {rank} (ms)", justify="right")
    for name, values in report["phases_s"].items():
        table.add_row(name, *[f"{value * 1e3:.3f}" for value in values])
    console.print(table)


@app.command()
@user_errors_exit_2
def calibrate(
    device: str = typer.Option("cpu", "--device", help="cpu (ranks sharing this machine) or cuda (one GPU)."),
    ranks: int = typer.Option(2, "--ranks", min=1, help="CPU: ranks for the all-to-all measurement (and threads per rank)."),
    out: Path = typer.Option(Path("validation/profiles"), "--out", help="Folder for the profile JSON."),
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and repetitions."),
) -> None:
    """Measure this device and write a CostModel profile: on a CPU GEMMs, memory, launches, backward ratio, all-to-all and
    the expert-parallel layer's phases; on one GPU grouped GEMMs, GEMMs, a copy and whole MoE layers of other shapes than
    the validation's (router, permute, experts, unpermute, shared experts, backward)."""
    from moesim.validation.calibrate import calibrate as run_calibrate

    if device not in ("cpu", "cuda"):
        raise MoesimError(f"--device: '{device}' is neither cpu nor cuda")
    if device == "cuda":
        if not __import__("torch").cuda.is_available():
            raise MoesimError("--device cuda: no CUDA device here; use --device cpu")
        from moesim.validation.single_device import calibrate_single_device

        with console.status("calibrating one GPU ...", spinner="dots") as status:
            path = calibrate_single_device("cuda", quick, profile_dir=out,
                                           on_step=lambda step: status.update(f"calibrating: {step} ..."))
        console.print(f"profile written to {path}; use it with --set simulation.cost_profile={path}")
        return
    with console.status("calibrating ...", spinner="dots") as status:
        path = run_calibrate(device, ranks, out_dir=out, quick=quick, on_step=lambda step: status.update(f"calibrating: {step} ..."))
    console.print(f"profile written to {path}; use it with --set simulation.cost_profile={path}")


@app.command()
@user_errors_exit_2
def validate(
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    ranks: str = typer.Option("2,4", "--ranks", help="Expert-parallel rank counts of the measured layers, comma-separated."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Use this calibrated profile (one rank count only) "
                                           "instead of calibrating in the same run, interleaved with the validation layers."),
    out: Path = typer.Option(Path("validation"), "--out", help="Folder for REPORT.md, the plot and the raw rows."),
    quick: bool = typer.Option(False, "--quick", help="Two configurations instead of the full grid."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Passes over the whole grid (repetitions are spread "
                                         "over them); default 10 across ranks, 3 on a single device."),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Timed runs of each configuration per pass."),
    single_device: bool = typer.Option(False, "--single-device", help="One device: the whole MoE layer (router, permute, "
                                       "experts, unpermute, shared experts, backward) at model sizes; what --device cuda runs."),
    from_raw: Optional[Path] = typer.Option(None, "--from-raw", help="Fit and report again from a single-device run's raw.json "
                                            "(no device needed)."),
) -> None:
    """Measure MoE layers with the executor, predict them with the simulator, and report the error."""
    import json as json_module

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.validation.validate import summary, validate as run_validate, write_report

    if device not in ("cpu", "cuda"):
        raise MoesimError(f"--device: '{device}' is neither cpu nor cuda")
    if device == "cuda" and from_raw is None and not __import__("torch").cuda.is_available():
        raise MoesimError("--device cuda: no CUDA device here; use --device cpu")
    if device == "cuda" or single_device or from_raw is not None:
        _validate_single_device(device, quick, rounds or 3, repeats, out, from_raw)
        return
    rounds = rounds or 10
    try:
        rank_counts = sorted({int(value) for value in ranks.split(",")})
    except ValueError:
        raise MoesimError(f"--ranks: '{ranks}' is not a comma-separated list of rank counts, e.g. 2,4") from None
    if min(rank_counts) < 2:
        raise MoesimError("--ranks: expert parallelism needs at least 2 ranks")
    if profile is not None and len(rank_counts) > 1:
        raise MoesimError("--profile: a profile describes one rank count; give one --ranks value with it")
    rows: list = []
    profiles: dict = {}
    for count in rank_counts:
        with Progress(TextColumn(f"[bold]{count} ranks"), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("calibrating" if profile is None else "measuring", total=None)
            count_rows, used = run_validate(
                profile, count, quick, rounds, repeats, profile_dir=out / "profiles", device=device,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                on_step=lambda step: progress.update(task, description=step),
            )
        rows += count_rows
        profiles[count] = json_module.loads(Path(used).read_text())
    report = write_report(rows, profiles, out, rounds, repeats)
    layer = summary(rows)
    console.print(f"layer-time error: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%} "
                  f"over {layer['count']} configurations")
    console.print(f"report written to {report}")


def _write_raw(out: Path, raw: dict) -> Path:
    """`out/<device>/raw.json`: a single-device run's measurements; returns the folder."""
    folder = out / raw["device"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raw.json").write_text(json.dumps(raw))
    return folder


def _validate_single_device(device: str, quick: bool, rounds: int, repeats: int, out: Path, from_raw: Optional[Path]) -> None:
    """`moesim validate --device cuda` / `--single-device` / `--from-raw`: the whole layer on one device."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.validation.single_device import report_from_raw, run_single_device
    from moesim.validation.single_device_report import error_stats, write_single_device_report

    if from_raw is not None:
        try:
            raw = json.loads(from_raw.read_text())
        except (OSError, ValueError) as error:
            raise MoesimError(f"--from-raw: cannot read {from_raw} ({error})") from None
        command = f"moesim validate --from-raw {from_raw}"
    else:
        def on_step(step: str) -> None:
            progress.update(task, description=step)
            progress.console.log(step)

        with Progress(TextColumn("[bold]single device"), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("kernel micro-benchmarks", total=None)
            raw = run_single_device(device, quick, rounds, repeats, on_step=on_step,
                                    on_progress=lambda done, total: progress.update(task, completed=done, total=total))
        command = f"moesim validate --device {device}{' --single-device' if device == 'cpu' else ''}{' --quick' if quick else ''}"
        _write_raw(out, raw)  # first: if the fit fails, the measurements are kept and it can be made again from them
    try:
        rows, profile_path = report_from_raw(raw, out / "profiles")
    except (KeyError, ValueError) as error:
        raise MoesimError(f"--from-raw: {from_raw} is not a single-device run of this version ({error})") from None
    folder = _write_raw(out, raw) if from_raw is not None else out / raw["device"]
    report = write_single_device_report(rows, raw, profile_path, folder, command)
    layer = error_stats([row for row in rows if row["phase"] == "layer"])
    console.print(f"layer-time error on {raw['device']}: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}, "
                  f"max {layer['max']:.1%} over {layer['count']} layers; report written to {report}")


@app.command("plan")
@user_errors_exit_2
def plan_command(
    scenario: Path = typer.Argument(..., help="Scenario file: the model, workload and global batch to plan for."),
    target_tokens_per_s: float = typer.Option(..., "--target-tokens-per-s", min=0, help="Throughput to reach (tokens/s)."),
    gpu: str = typer.Option("H100-SXM", "--gpu", help="GPU types to consider, comma-separated."),
    max_gpus: int = typer.Option(512, "--max-gpus", min=1),
    max_drop_rate: float = typer.Option(1.0, "--max-drop-rate", min=0, max=1),
    strategies: Optional[str] = typer.Option(None, "--strategies",
                                             help="Routing rules to consider, comma-separated (default: the scenario's)."),
    capacity_factors: Optional[str] = typer.Option(None, "--capacity-factors", help="e.g. null,1.0,1.25 (default: the scenario's)."),
    prices: Optional[str] = typer.Option(None, "--price", help="Dollars per GPU-hour, e.g. H100-SXM=2.5,H200=3.5."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Search GPU type, nodes, TP/PP/EP, routing and capacity factor for the cheapest plan that meets the target."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.planning.plan import plan as run_plan
    from moesim.scenario import apply_overrides, parse_override, read_document

    document = apply_overrides(read_document(scenario), overrides)
    price_table = {}
    for item in (prices or "").split(","):
        if item.strip():
            name, _, value = item.partition("=")
            try:
                price_table[name.strip()] = float(value)
            except ValueError:
                raise MoesimError(f"--price '{item}': expected GPU=DOLLARS, e.g. H100-SXM=2.5") from None
    factors = None
    if capacity_factors:
        factors = [parse_override(f"x={value}")[1] for value in capacity_factors.split(",")]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=as_json) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = run_plan(document, target_tokens_per_s, [g.strip() for g in gpu.split(",")], max_gpus, max_drop_rate,
                          strategies.split(",") if strategies else None, factors, price_table, on_progress=on_progress)
    best = result.best_achievable
    if as_json:
        print_json({"options": [o.as_dict() for o in result.options], "pareto": [o.as_dict() for o in result.pareto],
                    "harsher": [o.as_dict() for o in result.harsher], "evaluated": result.evaluated, "feasible": result.feasible,
                    "best_achievable": best.as_dict() if best else None})
        if not result.options:
            raise typer.Exit(code=1)
        return
    if not result.options:
        reach = (f"the fastest layout within the limits reaches {best.tokens_per_s:,.0f} tokens/s "
                 f"({best.gpus} x {best.candidate.gpu}, TP {best.candidate.tp_size} PP {best.candidate.pp_size} "
                 f"EP {best.candidate.ep_size}, {best.candidate.strategy})" if best else "no layout fits in memory")
        console.print(f"no plan: none of {result.evaluated} layouts reaches {target_tokens_per_s:,.0f} tokens/s; {reach}. "
                      "Raise --max-gpus, add GPU types, or lower the target.")
        raise typer.Exit(code=1)
    top = result.options[0]
    console.print(f"[bold]plan:[/bold] {top.gpus} x {top.candidate.gpu}, TP {top.candidate.tp_size} PP {top.candidate.pp_size} "
                  f"EP {top.candidate.ep_size}, {top.candidate.strategy}: {top.tokens_per_s:,.0f} tokens/s "
                  f"(target {target_tokens_per_s:,.0f}), ${top.dollars_per_million_tokens:.4g} per million tokens")
    console.print(f"{result.evaluated} layouts simulated in fast mode, {result.feasible} meet the target; "
                  "finalists confirmed in full mode:")
    for title, rows in (("best plans (full timeline)", result.options),
                        ("Pareto front: cost per hour against step time (fast)", result.pareto),
                        ("sensitivity: skew +0.5 and NICs at half speed", result.harsher)):
        table = Table(title=title)
        for column in ("GPUs", "GPU", "TP", "PP", "EP", "rule", "cf", "step (s)", "tokens/s", "drops", "memory (GB)",
                       "GPU-h/M tokens", "$/h", "$/M tokens"):
            table.add_column(column, justify="right")
        for o in rows:
            c = o.candidate
            table.add_row(str(o.gpus), c.gpu, str(c.tp_size), str(c.pp_size), str(c.ep_size), c.strategy,
                          "dropless" if c.capacity_factor is None else str(c.capacity_factor), f"{o.step_time_s:.3f}",
                          f"{o.tokens_per_s:,.0f}", f"{o.drop_rate:.2%}", f"{o.memory_gb:.0f}",
                          f"{o.gpu_hours_per_million_tokens:.4g}", f"{o.dollars_per_hour:,.0f}",
                          f"{o.dollars_per_million_tokens:.4g}")
        console.print(table)
    console.print("[dim]prices: $/GPU-hour assumptions (moesim.planning.plan.DEFAULT_PRICE_PER_GPU_HOUR) unless --price is given[/dim]")


@app.command()
@user_errors_exit_2
def report(
    source: Path = typer.Argument(..., help="Scenario file to size, or a sweep's results store (.sqlite)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.html, report.md and the plots."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    fast: bool = typer.Option(False, "--fast", help="Fast network mode for the headline run."),
    sweep_id: Optional[str] = typer.Option(None, "--sweep", help="Which sweep of a results store (default: the latest)."),
) -> None:
    """Write a cluster sizing report (self-contained HTML with plots, and Markdown)."""
    from moesim.planning.report import write_report, write_results_report
    from moesim.scenario import load_scenario

    output_folder(out, "--out")
    with console.status("simulating and plotting ...", spinner="dots"):
        if source.suffix.lower() in (".sqlite", ".db", ".sqlite3"):
            if not source.exists():
                raise MoesimError(f"{source}: no such results store")
            html_path, md_path = write_results_report(source, out, sweep_id)
        else:
            html_path, md_path = write_report(load_scenario(source, overrides), out, fast)
    console.print(f"report written to {html_path} and {md_path}")


@app.command("train-small")
@user_errors_exit_2
def train_small(
    balancing: str = typer.Option("none,switch,zloss,bias", "--balancing", help="Set-ups to train, comma-separated."),
    steps: int = typer.Option(300, "--steps", min=1),
    out: Path = typer.Option(Path("validation/train-small"), "--out", help="Folder for logs, traces and the plot."),
) -> None:
    """Train a small MoE language model on the standard library's source; plot expert balance per set-up."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.executor.train_small import BALANCING, SmallConfig, busiest_share_curve, imbalance_curve, plot_balance, train

    modes = [mode.strip() for mode in balancing.split(",") if mode.strip()]
    for mode in modes:
        if mode not in BALANCING:
            raise MoesimError(f"--balancing: unknown set-up '{mode}'; choose from {', '.join(BALANCING)}")
    logs = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        for mode in modes:
            task = progress.add_task(mode, total=steps)
            logs.append(train(SmallConfig(steps=steps), mode, out, on_step=lambda done, task=task: progress.update(task, completed=done)))
    plot = plot_balance(logs, out / "load_balance.png")
    table = Table(title="expert load (mean over layers)")
    for column in ("set-up", "max / mean, first 10 steps", "max / mean, last 50 steps", "2 busiest experts' share, last 50",
                   "final loss (nats/byte)", "trace"):
        table.add_column(column)
    for log in logs:
        curve = imbalance_curve(log)
        table.add_row(log["balancing"], f"{curve[:10].mean():.2f}", f"{curve[-50:].mean():.2f}",
                      f"{busiest_share_curve(log)[-50:].mean():.0%}",
                      f"{sum(log['loss'][-20:]) / min(20, len(log['loss'])):.3f}", log["trace"])
    console.print(table)
    console.print(f"plot written to {plot}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (for editor completion)."""
    from moesim.scenario import scenario_json_schema

    print_json(scenario_json_schema())


if __name__ == "__main__":  # pragma: no cover
    app()
