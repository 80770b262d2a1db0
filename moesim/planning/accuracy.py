"""What a report says about how sure it is: the simulator's layer-time error against moesim's executor, read from
the committed validation runs (one GPU each under `validation/<device>/`, CPU ranks in `validation/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from moesim.validation.validate_report import summary

REPO = Path(__file__).resolve().parent.parent.parent


def _validation_error(rows_path: Path, held_out: bool = False) -> Optional[dict[str, float]]:
    """Layer-time error (`validate_report.summary`) of a committed validation's rows (its main grid, or its
    held-out grid), if it has any."""
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    chosen = [row for row in rows if row["phase"] == "layer" and bool(row.get("held_out")) == held_out]
    return summary(rows, held_out=held_out) if chosen else None


def _error_words(stats: dict[str, float]) -> str:
    return (
        f"median {stats['median']:.1%}, 90th percentile {stats['p90']:.1%}, maximum {stats['max']:.1%}, "
        f"signed median {stats['signed']:+.1%}"
    )


SINGLE_GPU_VALIDATIONS = ("NVIDIA-H200", "NVIDIA-H100-80GB-HBM3")
"""The folders under validation/ that `validation/gpu.sh` filled, one per GPU it ran on."""


def validation_line() -> str:
    """The simulator's measured error against moesim's executor: on a GPU (single device) and on CPU ranks."""
    parts = []
    for folder in SINGLE_GPU_VALIDATIONS:
        gpu = _validation_error(REPO / "validation" / folder / "rows.json")
        if gpu:
            parts.append(
                f"on one {folder.replace('-', ' ', 1)}, {gpu['count']} MoE layers: {_error_words(gpu)} "
                f"(validation/{folder}/REPORT.md)"
            )
    cpu = _validation_error(REPO / "validation" / "validation_rows.json")
    if cpu:
        held = _validation_error(REPO / "validation" / "validation_rows.json", held_out=True)
        held_words = f"; held-out grid, {held['count']} layers: {_error_words(held)}" if held else ""
        parts.append(
            f"on CPU ranks with all-to-all, {cpu['count']} layers: {_error_words(cpu)}{held_words} "
            "(validation/REPORT.md)"
        )
    if not parts:
        return "No validation run found (run `moesim validate`)."
    return (
        "Layer time, simulator against moesim's executor " + "; ".join(parts) + ". No multi-GPU run of moesim's own "
        "has checked the network model: inside a node it reads public nccl-tests and DeepEP measurements (each phase "
        "below says which, with its held-out error); across nodes, NICs run at datasheet rates."
    )
