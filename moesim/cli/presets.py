"""`moesim presets` and `moesim profiles`: the published models and GPUs, and what each GPU's cost model
rests on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.table import Table

from moesim import units
from moesim.cli.common import (
    console,
    presets_app,
    print_json,
    profiles_app,
    user_errors_exit_2,
    warn_model_notes,
)
from moesim.errors import MoesimError
from moesim.sim.sources import grade


# ---------------------------------------------------------------- profiles
@profiles_app.command("show")
@user_errors_exit_2
def profiles_show(
    gpu: str = typer.Argument(..., help="GPU preset, e.g. H200."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What the GPU's cost model rests on, part by part, with the error measured for each."""
    from moesim.cluster.hardware import gpu_preset
    from moesim.cost import model_for_gpu

    cost = model_for_gpu(gpu_preset(gpu))
    if as_json:
        print_json({"gpu": cost.name, "source": cost.source, "parts": dict(cost.sources)})
        return
    table = Table(title=f"{cost.name}: {cost.source}")
    table.add_column("part")
    table.add_column("basis")
    table.add_column("source and error (|predicted / measured - 1|)", overflow="fold")  # long file names fold
    for part, label in cost.sources:
        table.add_row(part, grade(label), label)
    console.print(table)


@profiles_app.command("build")
@user_errors_exit_2
def profiles_build() -> None:
    """Fit the shipped profiles to the measured tables (moesim/cost/tables) and write moesim/cost/shipped."""
    from moesim.cost.shipping import build_shipped

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
    table = Table(title="Model presets (moesim presets show NAME)", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("name", "params", "active", "experts", "shared", "top-k", "MoE layers"):
        table.add_column(column, justify="left" if column == "name" else "right", no_wrap=True)
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
    gpu_table = Table(title="GPU presets (moesim presets show --gpu NAME)", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("name", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM GB", "HBM TB/s", "scale-up GB/s", "NIC Gb/s"):
        gpu_table.add_column(column, justify="left" if column == "name" else "right", no_wrap=column == "name")
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
    model_file: Optional[Path] = typer.Option(
        None, "--model", help="Show a Hugging Face config.json (or a checkpoint folder holding one) instead."
    ),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", min=1, help="Sequence length for FLOPs (default: 4,096 or the model's context if shorter)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model preset's architecture and accounting, a Hugging Face config's, or a GPU preset."""
    if gpu is not None:
        _show_gpu(gpu, as_json)
        return
    if (name is None) == (model_file is None):
        raise MoesimError(
            "name a model preset (moesim presets show mixtral-8x7b), a config.json (--model FILE) or a GPU "
            "(--gpu H100-SXM), one of them"
        )
    from moesim.models.accounting import summarize
    from moesim.models.hf_import import spec_from_hf_file
    from moesim.models.presets import PUBLISHED, model_preset

    spec = model_preset(name) if name is not None else spec_from_hf_file(model_file)  # type: ignore[arg-type]
    warn_model_notes(spec)
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
        f"published {units.params(published.active_params)}"
        if published and published.active_params
        else "architecture"
    )
    rows = [
        ("total parameters", units.params(summary.total_params), published_total),
        ("active parameters / token", units.params(summary.active_params), published_active),
        ("  without input embedding", units.params(summary.active_params_without_input_embedding), "architecture"),
        ("routed-expert parameters", units.params(summary.expert_params), "architecture"),
        ("experts (routed + shared)", f"{spec.num_experts} + {spec.num_shared_experts}", "config"),
        ("top-k", str(spec.top_k), "config"),
        ("MoE / dense layers", f"{summary.num_moe_layers} / {summary.num_dense_layers}", "config"),
        (
            f"forward FLOPs / token @ {summary.seq_len} tokens",
            units.flops(summary.flops_per_token),
            "2 x active + attention",
        ),
        ("training FLOPs / token", units.flops(summary.training_flops_per_token), "3 x forward"),
        (
            "weights + grads + optimizer",
            units.byte_size(summary.training_state_bytes),
            "bf16 / bf16 / fp32 Adam, 16 B/param",
        ),
        (
            "activations / token (no recompute)",
            units.byte_size(summary.activation_bytes_per_token),
            "Korthikanti et al. 2022",
        ),
        ("KV cache / token (bf16)", units.byte_size(summary.kv_cache_bytes_per_token), _kv_source(spec)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _kv_source(spec: Any) -> str:
    """How the KV cache per token is counted: the attention kind, and whether a window would hold less."""
    kind = spec.attention_type.upper()
    if spec.attention_window is None:
        return kind
    return f"{kind}, every layer's whole context"


def _nccl_basis(gpu_name: str) -> str:
    from moesim.cluster.collective_tables import shipped  # the presets command's only use of the tables

    measured = shipped(gpu_name)
    if measured is None:
        return "datasheet NVLink rate and 2 us a message (no table measures this GPU)"
    largest = max(measured.measured_ranks)
    return f"{measured.label()}; up to {largest} GPUs (a larger NVLink domain: the datasheet rate)"


def _show_gpu(name: str, as_json: bool) -> None:
    from moesim.cluster.deepep_kernels import shipped_kernels  # cached JSON read, only for this table
    from moesim.cluster.hardware import gpu_preset
    from moesim.cost import model_for_gpu
    from moesim.sim.sources import alltoall_source  # the simulator's own label for a DeepEP phase

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
        ("compute cost model", model_for_gpu(gpu).source + " (moesim profiles show)"),
        ("NCCL inside a node", _nccl_basis(gpu.name)),
        ("DeepEP's kernels", alltoall_source(shipped_kernels(gpu.name), gpu.name, "link rates (not measured)")),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
