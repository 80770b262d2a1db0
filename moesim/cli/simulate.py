"""`moesim check`, `route`, `run` and `schema`: one scenario, validated, routed or simulated."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from moesim import units
from moesim.cli.common import (
    ROUTE_SCORE_BYTES,
    SET_HELP,
    app,
    console,
    output_file,
    print_json,
    user_errors_exit_2,
)
from moesim.errors import MoesimError
from moesim.sim.sources import grade, phases_by_source


# ---------------------------------------------------------------- scenarios
@app.command()
@user_errors_exit_2
def check(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved scenario as JSON."),
) -> None:
    """Validate a scenario and print it with every default filled in."""
    import textwrap

    import yaml

    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.scenario.stacks import stack_lines
    from moesim.sim.memory import check_fits, memory_per_gpu
    from moesim.sim.plan import StagePlan

    resolved = load_scenario(scenario, overrides)
    check_fits(memory_per_gpu(resolved, StagePlan(resolved)), resolved.workload.mode == "training")  # as `run` does
    data = resolved.model_dump(mode="json")
    if as_json:
        print_json(data)
        return
    typer.echo(f"# {scenario.name}: valid ({resolved.cluster.world_size} GPUs, model {resolved.model.name})")
    for line in stack_lines(resolved):  # wrapped at the terminal's width, indented as given
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        for piece in textwrap.wrap(line, width=console.width - 2, subsequent_indent=indent):
            typer.echo(f"# {piece}")
    dumper = _compact_lists_dumper()
    # PyYAML breaks a line once it passes the width: leave room for the token that passes it
    typer.echo(yaml.dump(data, Dumper=dumper, sort_keys=False, width=console.width - 8), nl=False)


@app.command()
@user_errors_exit_2
def route(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    strategies: List[str] = typer.Option(
        [], "--strategy", "-s", help="Routing rule(s) to compare (repeatable; default: the scenario's)."
    ),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    layers: int = typer.Option(1, "--layers", min=1, help="MoE layers to route (synthetic scores)."),
    tokens: Optional[int] = typer.Option(
        None, "--tokens", min=1, help="Tokens per layer (default: micro-batch x seq_len x ep_size)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Route the scenario's router scores under one or more rules and compare them."""
    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.errors import unknown_name_message
    from moesim.routing.names import ROUTING_STRATEGIES
    from moesim.sim.scenario_routing import compare_rules, scores_for_scenario

    resolved = load_scenario(scenario, overrides)
    chosen = list(strategies) or [resolved.routing.strategy]
    for name in chosen:
        if name not in ROUTING_STRATEGIES:
            raise MoesimError(f"--strategy: {unknown_name_message('routing rule', name, list(ROUTING_STRATEGIES))}")
    if tokens is not None and tokens * resolved.model.num_experts * layers * 4 > ROUTE_SCORE_BYTES:
        most = ROUTE_SCORE_BYTES // (resolved.model.num_experts * layers * 4)
        raise MoesimError(
            f"--tokens: {tokens:,} tokens x {resolved.model.num_experts} experts x {layers} layers of fp32 "
            f"scores exceed {ROUTE_SCORE_BYTES / 2**30:.0f} GiB; use at most {most:,} tokens"
        )
    scores = scores_for_scenario(resolved, layers=layers, num_tokens=tokens)
    reports = compare_rules(resolved, chosen, scores)
    if as_json:
        print_json([report.as_dict() for report in reports])
        return
    console.print(  # a line of its own: it wraps where a table title would be cut
        f"[bold]{resolved.name}[/bold]: {scores[0].num_tokens:,} tokens x {resolved.model.num_experts} experts, "
        f"top-{resolved.routing.top_k}, capacity factor {resolved.routing.capacity_factor or 'dropless'}, EP "
        f"{resolved.parallelism.ep_size}"
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))  # the box puts a space between columns
    rows = [
        {
            "rule": report.strategy,
            "layer": str(report.layer),
            "drops": f"{report.metrics.drop_rate:.2%}",
            "max/mean": f"{report.metrics.load_imbalance:.3f}",
            "no expert": str(report.metrics.tokens_without_expert),
            "affinity": f"{report.metrics.affinity_captured:.3f}",
            "dispatch": units.byte_size(report.metrics.dispatch_bytes),
            "off-node": units.byte_size(report.metrics.bytes_across_nodes),
            "nodes": f"{report.metrics.mean_nodes_per_token:.2f}",
            "time": f"{report.routing_seconds * 1e3:.1f} ms",
        }
        for report in reports
    ]
    # columns that say nothing here are left out: one layer, one node
    unused = {"layer"} if layers == 1 else set()
    if all(report.metrics.bytes_across_nodes == 0 for report in reports):
        unused |= {"off-node", "nodes"}
    if all(report.metrics.tokens_without_expert == 0 for report in reports):
        unused |= {"no expert"}
    for column in (name for name in rows[0] if name not in unused):
        table.add_column(column, justify="left" if column == "rule" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*[value for name, value in row.items() if name not in unused])
    console.print(table)
    console.print(
        "drops: token-expert pairs dropped; max/mean: expert load, busiest over mean; no expert: tokens routed "
        "nowhere; affinity: router probability served / unconstrained top-k; dispatch: bytes of one copy of the "
        "hidden vector per distinct destination rank (activation dtype), off-node: of them across nodes; nodes: "
        "distinct nodes per token; time: the rule's routing time on this machine."
    )


@app.command()
@user_errors_exit_2
def run(
    scenario: Path = typer.Argument(..., help="Scenario file (.yaml, .toml or .json)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the StepResult as JSON."),
    trace: Optional[Path] = typer.Option(
        None, "--trace", help="Write the simulated timeline as Chrome trace / Perfetto JSON."
    ),
) -> None:
    """Simulate one step of the scenario and print where the time goes."""
    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.sim.step import simulate
    from moesim.sim.timeline import timeline_name

    output_file(trace, "--trace")
    resolved = load_scenario(scenario, overrides)
    if trace is not None and timeline_name(resolved) != "simpy":
        raise MoesimError(
            "--trace: a trace needs the SimPy timeline (per-rank clocks keep no events); drop --trace or set "
            "simulation.timeline=simpy (the default with simulation.network_mode=full)"
        )
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
    if result.breakdown:
        console.print(breakdown_table(result))
    print_sources(result)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if trace is not None:
        console.print(f"timeline written to {trace} (open in ui.perfetto.dev)")


def breakdown_table(result: Any) -> Table:
    """The training step in the parts a published breakdown names; they add up to the step time."""
    from moesim.sim.breakdown import BREAKDOWN_PARTS

    table = Table(title="step breakdown, busiest stage (adds up to the step time)")
    table.add_column("part")
    table.add_column("seconds", justify="right")
    for key, label in BREAKDOWN_PARTS:
        value = result.breakdown.get(key, 0.0)
        if abs(value) > 1e-9:
            table.add_row(label, f"{value:,.3f}")
    table.add_row("step", f"{result.step_time_s:,.3f}")
    return table


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
        table.add_row(
            name,
            f"{seconds:.4f}",
            f"{share:.1%}",
            grade(result.sources.get(name, "assumed")),
            "█" * max(1, round(share * 30)) if share > 0.002 else "",
        )
    return table


def print_sources(result: Any) -> None:
    """Under the tables: what each basis means for this result (every distinct source, with its measured error)."""
    console.print(
        "[bold]basis of the figures[/bold] (error: |predicted / measured - 1|, on kernel shapes the fit never saw "
        "where the profile has them, else as labelled)"
    )
    for label, phases in phases_by_source(result.sources):
        console.print(escape(f"  [{grade(label)}] {', '.join(phases)}: {label}"))
    if getattr(result, "energy_source", ""):
        console.print(escape(f"  [assumed] energy: {result.energy_source}"))


def summary_table(result: Any) -> Table:
    """The step's headline figures, each with its unit."""
    from moesim.sim.memory import MEMORY_PARTS

    table = Table(title="step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    memory = result.memory
    rows = [("step time", f"{result.step_time_s:.3f} s")]
    if result.mode == "training":
        forward, backward = result.stage_forward_s, result.stage_backward_s
        busiest = max(range(len(forward)), key=lambda stage: forward[stage] + backward[stage])
        passes = f"{forward[busiest] * 1e3:,.1f} / {backward[busiest] * 1e3:,.1f} ms"
        rows += [
            ("pipeline (incl. bubble)", f"{result.pipeline_s:.3f} s ({result.pipeline_bubble_s:.3f} s bubble)"),
            ("1F / 1B, one micro-batch, busiest stage", passes),
            (
                "gradient sync at the step end (exposed)",
                f"{result.grad_allreduce_s:.3f} s ({result.grad_allreduce_exposed_s:.3f} s)",
            ),
            ("optimizer step", f"{result.optimizer_s:.4f} s"),
            ("tokens per step", f"{result.tokens_per_step:,.0f}"),
        ]
        if result.schedule_parts:  # DualPipe: the busiest rank's work as DeepSeek's Table 4 names it
            chunks = " / ".join(f"{result.schedule_parts[key]:.2f}" for key in ("1F", "1B", "1W", "1F1B"))
            rows.append(("DualPipe rank: 1F / 1B / 1W / 1F1B", f"{chunks} s"))
    else:
        rows += [
            ("prefill of the whole batch", f"{result.prefill_s:.3f} s"),
            ("decode step (one token per sequence)", f"{result.decode_step_s * 1e3:.2f} ms"),
        ]
    counted = "tokens" if result.mode == "training" else "output tokens"
    rows += [
        (f"{counted} / s", f"{result.tokens_per_s:,.0f}"),
        (f"{counted} / s per GPU", f"{result.tokens_per_s_per_gpu:,.1f}"),
        ("MFU (model FLOPs / bf16 dense peak)", f"{result.mfu:.1%}"),
        *([("HFU (with recomputed FLOPs)", f"{result.hfu:.1%}")] if result.hfu > result.mfu * 1.0001 else []),
        ("drop rate", f"{result.drop_rate:.2%}"),
        ("expert load imbalance (max / mean)", f"{result.load_imbalance:.3f}"),
        ("bytes across nodes per step", units.byte_size(result.bytes_across_nodes_per_step)),
        *(
            [(f"energy per million {counted} (GPUs)", f"{result.energy_kwh_per_million_tokens:.3g} kWh")]
            if result.energy_kwh_per_million_tokens is not None
            else []
        ),
        ("peak memory per GPU", f"{memory['total_bytes'] / 1e9:.1f} GB of {memory['capacity_bytes'] / 1e9:.0f} GB"),
        *[(f"  {label}", f"{memory[key] / 1e9:.1f} GB") for key, label in MEMORY_PARTS if memory.get(key)],
    ]
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (for editor completion)."""
    from moesim.scenario import scenario_json_schema

    print_json(scenario_json_schema())


if __name__ == "__main__":  # pragma: no cover
    app()


@app.command()
@user_errors_exit_2
def serve(
    scenario: Path = typer.Argument(..., help="Scenario file with a `serving` section (inference mode)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    concurrency: Optional[str] = typer.Option(
        None, "--concurrency", help="Comma-separated concurrencies: the throughput-latency curve, closed loop."
    ),
) -> None:
    """Serve the scenario's requests with continuous batching: latency percentiles, throughput, cost."""
    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.serving import PERCENTILES, concurrency_curve, simulate_serving
    from moesim.serving.simulate import price_words

    resolved = load_scenario(scenario, overrides)
    if concurrency is not None:
        try:
            levels = [int(value) for value in concurrency.split(",")]
        except ValueError:
            raise MoesimError(f"--concurrency: '{concurrency}' is not a list of request counts, e.g. 1,8,64") from None
        if min(levels) < 1:
            raise MoesimError("--concurrency: concurrencies are request counts of at least 1")
        with console.status(f"serving at {len(levels)} concurrencies ...", spinner="dots"):
            curve = concurrency_curve(resolved, levels)
        if as_json:
            print_json([{"concurrency": level, **result.as_dict()} for level, result in curve])
            return
        table = Table(title=f"{resolved.name}: throughput against latency", box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("concurrency", "TTFT p50 (s)", "TPOT p50 (ms)", "tokens/s per GPU", "$/M tokens"):
            table.add_column(column, justify="right")
        for level, result in curve:
            table.add_row(
                str(level),
                f"{result.ttft_s[50]:.3g}",
                f"{result.tpot_s[50] * 1e3:.3g}",
                f"{result.output_tokens_per_s_per_gpu:,.0f}",
                f"{result.dollars_per_million_output_tokens:.4g}",
            )
        console.print(table)
        console.print("[dim]output tokens; closed loop (each finished request replaced at once)[/dim]")
        return
    with console.status(f"serving {resolved.serving.num_requests} requests ...", spinner="dots"):
        result = simulate_serving(resolved)
    if as_json:
        print_json(result.as_dict())
        return
    title = f"{resolved.name}: latency (s)"
    if result.overloaded:
        typer.echo(
            f"warning: serve: overloaded: requests arrive at {result.load:,.3g}x the rate this deployment serves; the "
            "queue grows without end and the latencies below are this run's, not a steady state; lower "
            "serving.request_rate or add GPUs (moesim plan --serve)",
            err=True,
        )
        title += f", OVERLOADED ({result.load:,.3g}x capacity): growing with the run's length"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    for percentile in PERCENTILES:
        table.add_column(f"p{percentile}", justify="right")
    for label, values in (
        ("time to first token", result.ttft_s),
        ("time per output token", result.tpot_s),
        ("end to end", result.e2e_s),
    ):
        table.add_row(label, *[f"{values[percentile]:.4g}" for percentile in PERCENTILES])
    console.print(table)
    figures = Table(title="throughput and cost", box=box.SIMPLE_HEAD, show_edge=False)
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for label, value in (
        ("output tokens / s", f"{result.output_tokens_per_s:,.0f}"),
        ("output tokens / s per GPU", f"{result.output_tokens_per_s_per_gpu:,.1f}"),
        ("input tokens / s", f"{result.input_tokens_per_s:,.0f}"),
        ("input tokens / s per GPU", f"{result.input_tokens_per_s / result.gpus:,.1f}"),
        ("requests / s", f"{result.requests_per_s:,.2f}"),
        (
            f"$ per million output tokens ({price_words(resolved.serving)})",
            f"{result.dollars_per_million_output_tokens:.4g}",
        ),
        *(
            [("energy per million output tokens (GPUs)", f"{result.energy_kwh_per_million_tokens:.3g} kWh")]
            if result.energy_kwh_per_million_tokens is not None
            else []
        ),
    ):
        figures.add_row(label, value)
    console.print(figures)
    if result.energy_source:
        console.print(f"[dim]energy: {result.energy_source}[/dim]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")


def _compact_lists_dumper() -> type:
    """A YAML dumper that writes lists of plain values in flow style (recorded request lengths take a few lines,
    not one line each); mappings stay in block style and long strings fold."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, values: list) -> yaml.Node:
        flow = all(not isinstance(value, (dict, list)) for value in values)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=flow)

    Dumper.add_representer(list, represent_list)
    return Dumper
