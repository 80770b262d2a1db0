"""`moesim plan --serve`: the cheapest serving deployment for a request rate within latency targets, printed."""

from __future__ import annotations

import re
from typing import Any, Optional

import typer
from rich.markup import escape

from moesim.cli.common import console, fit_columns, print_json, print_table, progress_bar
from moesim.errors import MoesimError


def serving_options(serve: bool, deploy: Optional[str], margin: Optional[str]) -> Optional[int]:
    """Check `plan`'s serving-only options (`--deploy ENGINE`, `--margin pNN`) before any work; the margin's
    percentile, or None."""
    if deploy is not None and deploy not in ("trtllm", "sglang", "vllm"):
        raise MoesimError(f"--deploy: {deploy!r} is not a serving engine; use trtllm, sglang or vllm")
    if deploy is not None and not serve:
        raise MoesimError("--deploy: a training plan prints Megatron-Core's arguments; --deploy goes with --serve")
    if margin is None:
        return None
    if not serve:
        raise MoesimError("--margin: sizes serving plans (the held-out runs are served ones); give --serve")
    if not re.fullmatch(r"p([1-9][0-9]?)", margin):
        raise MoesimError(f"--margin: {margin!r} is not a percentile; give p50 or p90")
    return int(margin[1:])


def plan_serving_command(
    document: dict,
    request_rate: Optional[float],
    ttft: float,
    tpot: float,
    gpus: list[str],
    max_gpus: int,
    prices: dict[str, float],
    as_json: bool,
    max_load: float = 0.95,
    deploy_engine: Optional[str] = None,
    kwh_price: Optional[float] = None,
    margin_quantile: Optional[int] = None,
) -> None:
    """`plan --serve`: the cheapest layout serving the rate within the latency targets, and the Pareto front."""

    from moesim.planning.deploy_serving import ENGINES, engine_deployment, pool_shapes
    from moesim.planning.serving import (
        cheapest_within,
        check_targets,
        option_scenario,
        plan_serving,
        searchable_layouts,
    )
    from moesim.scenario import scenario_from_dict
    from moesim.serving.checked import checked_words, held_out_margin

    base = scenario_from_dict(document)
    searchable_layouts(base, gpus, max_gpus)  # nothing to search stops here, before the progress bar
    rate = request_rate if request_rate is not None else base.serving.request_rate
    if rate is None:
        raise MoesimError("--request-rate: give the requests/s to serve (or set serving.request_rate)")
    check_targets(rate, ttft, tpot, max_load)  # so do targets that are none
    margin = held_out_margin(margin_quantile) if margin_quantile is not None else None
    factors = (margin.ttft, margin.tpot) if margin else (1.0, 1.0)
    with progress_bar("serving layouts", to_stderr=True, transient=as_json) as progress:
        task = progress.add_task("layouts", total=None)
        result = plan_serving(
            document,
            rate,
            ttft,
            tpot,
            gpus,
            max_gpus,
            prices,
            lambda done, total: progress.update(task, completed=done, total=total),
            max_load,
            kwh_price,
            factors,
        )
    unmargined = cheapest_within(result, ttft, tpot, max_load, (1.0, 1.0)) if margin else None

    def figures(option: Any) -> dict[str, Any]:
        """An option's figures as numbers (the JSON's), each named with its unit."""
        r = option.result
        return {
            "gpus": option.gpus,
            "gpu": option.gpu,
            "form": option.layout.form_label,
            "tp_size": option.tp_size,
            "ep": option.layout.ep_label,
            "split": option.layout.split,
            "token_budget": option.token_budget,
            "max_running": option.max_running,
            "ttft_p90_s": r.ttft_s[90],
            "tpot_p90_s": r.tpot_s[90],
            "output_tokens_per_s_per_gpu": r.output_tokens_per_s_per_gpu,
            "load": r.load,
            "dollars_per_million_output_tokens": r.dollars_per_million_output_tokens,
        }

    def row(option: Any) -> dict[str, str]:
        f = figures(option)
        return {
            "GPUs": str(f["gpus"]),
            "GPU": f["gpu"],
            "form": f["form"],
            "TP": str(f["tp_size"]),
            "EP": f["ep"],
            "split": f["split"],
            "budget": f"{f['token_budget']:,}",
            "seqs": str(f["max_running"]),
            "TTFT p90 s": f"{f['ttft_p90_s']:.3g}",
            "TPOT p90 ms": f"{f['tpot_p90_s'] * 1e3:.3g}",
            "tok/s/GPU": f"{f['output_tokens_per_s_per_gpu']:,.0f}",
            "load": "-" if f["load"] is None else f"{f['load']:.0%}",
            "$/M tokens": f"{f['dollars_per_million_output_tokens']:.4g}",
        }

    power = kwh_price if kwh_price is not None else base.serving.power_price_per_kwh
    shown = deploy_engine or base.serving.engine or "sglang"
    deployments = {}
    if result.options:
        chosen = option_scenario(document, result.options[0])
        shapes = pool_shapes(chosen)  # the pools' memory, built once for every engine's commands
        engines = ENGINES if as_json and not deploy_engine else (shown,)
        deployments = {name: engine_deployment(chosen, name, shapes) for name in engines}
    if as_json:
        print_json(
            {
                "deploy": {name: deployment.as_dict() for name, deployment in deployments.items()},
                "margin": margin._asdict() if margin else None,
                "without_margin": figures(unmargined) if unmargined else None,
                "options": [{**figures(o), "result": o.result.as_dict()} for o in result.options],
                "evaluated": result.evaluated,
                "compute_sources": result.compute_sources,
            }
        )
        return
    if result.options:
        best = result.options[0]
        console.print(
            f"plan: {best.gpus} x {best.gpu}, "
            + (
                f"attention TP {best.tp_size} with EP {best.ep_size} (DEP)"
                if best.layout.form == "DEP"
                else f"replicas of TP {best.tp_size} (experts split by TP)"
                + (f" in {best.layout.pp_size} pipeline stages" if best.layout.pp_size > 1 else "")
            )
            + (
                f", prefill on {best.layout.prefill_nodes} of {best.layout.num_nodes} nodes"
                f" (EP {best.layout.prefill_ep})"
                if best.layout.prefill_nodes
                else ""
            )
            + f" serves {rate:g} requests/s "
            f"within TTFT p90 {ttft:g} s and TPOT p90 {tpot * 1e3:g} ms, "
            f"${best.result.dollars_per_million_output_tokens:.4g} per million output tokens"
        )
    if margin:
        console.print(
            f"margin: predicted p90 TTFT x{margin.ttft:.2f} and TPOT x{margin.tpot:.2f} before the targets "
            f"({margin.source}); without it: "
            + (
                f"{unmargined.gpus} x {unmargined.gpu}, ${unmargined.result.dollars_per_million_output_tokens:.4g} "
                "per million output tokens"
                if unmargined
                else "no plan either"
            )
        )
    if not result.options:
        near = result.best_achievable
        reach = (
            f"; the lowest TPOT p90 that keeps up: {near.result.tpot_s[90] * 1e3:.3g} ms on {near.gpus} x {near.gpu}"
            if near
            else "; none keeps up with the rate"
        )
        console.print(f"no plan: none of {result.evaluated} layouts meets the targets{reach}")
    for title, options in (
        ("cheapest serving layouts", result.options[:5]),
        ("Pareto front: throughput per GPU against TPOT", result.pareto),
    ):
        rows = [row(option) for option in options]
        if not rows:
            continue
        columns, dropped = fit_columns(
            list(rows[0]), rows, console.width, ("seqs", "budget", "load", "tok/s/GPU", "GPU")
        )
        print_table(title, columns, rows)
        if dropped:
            console.print(f"[dim]left out to fit {console.width} columns: {', '.join(dropped)} (--json has them)[/dim]")
    for gpu, source in sorted(result.compute_sources.items()):
        console.print(f"[dim]{gpu} iteration times: {source}; {checked_words(gpu, source)}[/dim]")
    console.print(
        f"[dim]{result.evaluated} layouts served {rate:g} requests/s (fast network mode); output tokens; load: the "
        f"rate over what the busier pool's engines serve at their largest steady batch (at most {max_load:.0%}); "
        "prices: $/GPU-hour assumptions unless --price is given"
        + (f"; with power at ${power:g}/kWh (board power, the whole hour)" if power else "")
        + "[/dim]"
    )
    if not result.options:
        raise typer.Exit(code=1)
    lines = deployments[shown].lines(min(console.width, 100) - 2)
    if not deploy_engine and not base.serving.engine:
        lines.insert(
            1, "  (the scenario names no engine: SGLang's shown; --deploy trtllm|vllm for another, --json has all)"
        )
    console.print(escape("\n".join(lines)), soft_wrap=True)
