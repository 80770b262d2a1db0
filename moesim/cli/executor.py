"""`moesim execute`, `calibrate`, `validate` and `train-small`: the real PyTorch MoE layer and what it
measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from moesim.cli.common import (
    SET_HELP,
    app,
    console,
    output_file,
    progress_bar,
    user_errors_exit_2,
)
from moesim.errors import MoesimError


@app.command()
@user_errors_exit_2
def execute(
    scenario: Path = typer.Argument(
        ..., help="Scenario file; its model's MoE layer is run for real (use small models on CPU)."
    ),
    ranks: int = typer.Option(2, "--ranks", min=1, help="Expert-parallel processes (gloo on CPU, NCCL on GPUs)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    tokens: Optional[int] = typer.Option(
        None, "--tokens", min=1, help="Tokens per rank (default: micro_batch_size x seq_len)."
    ),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed passes before timing."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed passes (the median is reported)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the per-rank phase times as JSON."),
    trace: Optional[Path] = typer.Option(None, "--save-trace", help="Save the router scores as a trace file (.npz)."),
) -> None:
    """Run one MoE layer for real, expert-parallel over torch.distributed, and time each phase."""
    from moesim.cli.common import load_scenario_noting as load_scenario
    from moesim.executor.launch import execute as run_execute

    output_file(out, "--out")
    output_file(trace, "--save-trace")
    resolved = load_scenario(scenario, overrides)
    if resolved.model.num_experts % ranks:
        raise MoesimError(f"--ranks: num_experts ({resolved.model.num_experts}) is not divisible by {ranks}")
    with console.status(f"running {resolved.model.name}'s MoE layer on {ranks} ranks ...", spinner="dots"):
        report = run_execute(resolved, ranks, tokens, warmup, repeats, str(trace) if trace else None)
    if out:
        out.write_text(json.dumps(report, indent=2))
    table = Table(
        title=f"{report['scenario']}: measured on {report['device']} ({report['backend']}, {ranks} ranks, "
        f"{report['tokens_per_rank']} tokens per rank), median of {repeats}"
    )
    table.add_column("phase")
    for rank in range(ranks):
        table.add_column(f"rank {rank} (ms)", justify="right")
    for name, values in report["phases_s"].items():
        table.add_row(name, *[f"{value * 1e3:.3f}" for value in values])
    console.print(table)


@app.command()
@user_errors_exit_2
def calibrate(
    target: Optional[str] = typer.Argument(
        None, help="network: fit nccl-tests output (FILES) into a network profile; omit to measure this device."
    ),
    files: Optional[List[Path]] = typer.Argument(None, help="network: nccl-tests output files (stdout of *_perf)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="network: the GPU preset measured (default: from FILES)."),
    deepep_nodes: Optional[int] = typer.Option(
        None, "--deepep-nodes", min=2, help="network: the nodes DeepEP's internode test ran on (it does not print it)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu (ranks sharing this machine) or cuda (one GPU)."),
    ranks: int = typer.Option(
        2, "--ranks", min=1, help="CPU: ranks for the all-to-all measurement (and threads per rank)."
    ),
    out: Path = typer.Option(
        Path("profiles"),
        "--out",
        help="Folder for the profile JSON (default ./profiles: yours; validation/profiles holds the committed ones).",
    ),
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and repetitions."),
) -> None:
    """Measure this device and write a CostModel profile: on a CPU GEMMs, memory, launches, backward ratio,
    all-to-all and the expert-parallel layer's phases; on one GPU grouped GEMMs, GEMMs, a copy and whole MoE layers
    of other shapes than the validation's (router, permute, experts, unpermute, shared experts, backward).
    `calibrate network FILES`: fit your cluster's nccl-tests output into a network profile instead."""
    from moesim.validation.calibrate import calibrate as run_calibrate

    if target is not None:
        if target != "network":
            raise MoesimError(f"calibrate: '{target}' is not a target; use `calibrate network FILES` or no argument")
        from moesim.cli.calibrate_network import calibrate_network  # the network path's own imports

        calibrate_network(files or [], gpu, out, deepep_nodes)
        return

    if device not in ("cpu", "cuda"):
        raise MoesimError(f"--device: '{device}' is neither cpu nor cuda")
    if device == "cuda":
        if not __import__("torch").cuda.is_available():
            raise MoesimError("--device cuda: no CUDA device here; use --device cpu")
        from moesim.validation.single_device import calibrate_single_device

        with console.status("calibrating one GPU ...", spinner="dots") as status:
            path = calibrate_single_device(
                "cuda", quick, profile_dir=out, on_step=lambda step: status.update(f"calibrating: {step} ...")
            )
        console.print(f"profile written to {path}; use it with --set simulation.cost_profile={path}")
        return
    with console.status("calibrating ...", spinner="dots") as status:
        path = run_calibrate(
            device, ranks, out_dir=out, quick=quick, on_step=lambda step: status.update(f"calibrating: {step} ...")
        )
    console.print(f"profile written to {path}; use it with --set simulation.cost_profile={path}")


@app.command()
@user_errors_exit_2
def validate(
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    ranks: str = typer.Option(
        "2,4", "--ranks", help="Expert-parallel rank counts of the measured layers, comma-separated."
    ),
    profile: Optional[Path] = typer.Option(
        None,
        "--profile",
        help="Use this calibrated profile (one rank count only) "
        "instead of calibrating in the same run, interleaved with the validation layers.",
    ),
    out: Path = typer.Option(Path("validation"), "--out", help="Folder for REPORT.md, the plot and the raw rows."),
    quick: bool = typer.Option(False, "--quick", help="Two configurations instead of the full grid."),
    rounds: Optional[int] = typer.Option(
        None,
        "--rounds",
        min=1,
        help="Passes over the whole grid (repetitions are spread "
        "over them); default 10 across ranks, 3 on a single device.",
    ),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Timed runs of each configuration per pass."),
    single_device: bool = typer.Option(
        False,
        "--single-device",
        help="One device: the whole MoE layer (router, permute, "
        "experts, unpermute, shared experts, backward) at model sizes; what --device cuda runs.",
    ),
    from_raw: Optional[Path] = typer.Option(
        None, "--from-raw", help="Fit and report again from a single-device run's raw.json (no device needed)."
    ),
) -> None:
    """Measure MoE layers with the executor, predict them with the simulator, and report the error."""
    import json as json_module

    from moesim.validation.validate import validate as run_validate
    from moesim.validation.validate_report import summary, write_report

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
        with progress_bar(f"{count} ranks", described=True) as progress:
            task = progress.add_task("calibrating" if profile is None else "measuring", total=None)
            count_rows, used = run_validate(
                profile,
                count,
                quick,
                rounds,
                repeats,
                profile_dir=out / "profiles",
                device=device,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                on_step=lambda step: progress.update(task, description=step),
            )
        rows += count_rows
        profiles[count] = json_module.loads(Path(used).read_text())
    report = write_report(rows, profiles, out, rounds, repeats)
    layer, held = summary(rows), summary(rows, held_out=True)
    console.print(
        f"layer-time error: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}, maximum "
        f"{layer['max']:.1%} over {layer['count']} configurations"
        + (
            f"; held-out grid: median {held['median']:.1%}, 90th percentile {held['p90']:.1%} over {held['count']}"
            if held["count"]
            else ""
        )
    )
    console.print(f"report written to {report}")


def _write_raw(out: Path, raw: dict) -> Path:
    """`out/<device>/raw.json`: a single-device run's measurements; returns the folder."""
    folder = out / raw["device"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raw.json").write_text(json.dumps(raw))
    return folder


def _validate_single_device(
    device: str, quick: bool, rounds: int, repeats: int, out: Path, from_raw: Optional[Path]
) -> None:
    """`moesim validate --device cuda` / `--single-device` / `--from-raw`: the whole layer on one device."""

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

        with progress_bar("single device", described=True) as progress:
            task = progress.add_task("kernel micro-benchmarks", total=None)
            raw = run_single_device(
                device,
                quick,
                rounds,
                repeats,
                on_step=on_step,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        flags = (" --single-device" if device == "cpu" else "") + (" --quick" if quick else "")
        command = f"moesim validate --device {device}{flags}"
        _write_raw(out, raw)  # first: if the fit fails, the measurements are kept and it can be made again from them
    try:
        rows, profile_path = report_from_raw(raw, out / "profiles")
    except (KeyError, ValueError) as error:
        raise MoesimError(f"--from-raw: {from_raw} is not a single-device run of this version ({error})") from None
    folder = _write_raw(out, raw) if from_raw is not None else out / raw["device"]
    report = write_single_device_report(rows, raw, profile_path, folder, command)
    layer = error_stats([row for row in rows if row["phase"] == "layer"])
    console.print(
        f"layer-time error on {raw['device']}: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}, "
        f"max {layer['max']:.1%} over {layer['count']} layers; report written to {report}"
    )


@app.command("train-small")
@user_errors_exit_2
def train_small(
    balancing: str = typer.Option("none,switch,zloss,bias", "--balancing", help="Set-ups to train, comma-separated."),
    steps: int = typer.Option(300, "--steps", min=1, help="Optimizer steps per set-up."),
    out: Path = typer.Option(Path("validation/train-small"), "--out", help="Folder for logs, traces and the plot."),
) -> None:
    """Train a small MoE language model on the standard library's source; plot expert balance per set-up."""

    from moesim.executor.train_small import (
        BALANCING,
        SmallConfig,
        busiest_share_curve,
        imbalance_curve,
        plot_balance,
        train,
    )

    modes = [mode.strip() for mode in balancing.split(",") if mode.strip()]
    for mode in modes:
        if mode not in BALANCING:
            raise MoesimError(f"--balancing: unknown set-up '{mode}'; choose from {', '.join(BALANCING)}")
    logs = []
    with progress_bar("{task.description}") as progress:
        for mode in modes:
            task = progress.add_task(mode, total=steps)
            logs.append(
                train(
                    SmallConfig(steps=steps),
                    mode,
                    out,
                    on_step=lambda done, task=task: progress.update(task, completed=done),
                )
            )
    plot = plot_balance(logs, out / "load_balance.png")
    table = Table(title="expert load (mean over layers)")
    for column in (
        "set-up",
        "max / mean, first 10 steps",
        "max / mean, last 50 steps",
        "2 busiest experts' share, last 50",
        "final loss (nats/byte)",
        "trace",
    ):
        table.add_column(column)
    for log in logs:
        curve = imbalance_curve(log)
        table.add_row(
            log["balancing"],
            f"{curve[:10].mean():.2f}",
            f"{curve[-50:].mean():.2f}",
            f"{busiest_share_curve(log)[-50:].mean():.0%}",
            f"{sum(log['loss'][-20:]) / min(20, len(log['loss'])):.3f}",
            log["trace"],
        )
    console.print(table)
    console.print(f"plot written to {plot}")
