"""The measured kernel tables of one device, read into plain samples the cost-model fits take.

A folder holds what `tables/README.md` lists (the team's shared measurements, one folder
per device and date): plain and fp8 GEMMs, grouped expert GEMMs (uniform loads; on the
H100 also fp8 and the backward), a SwiGLU FFN's forward and backward, FlashAttention,
and an HBM copy. Every file but `gemm_bf16.csv` and `hbm_copy.json` is optional.
"""

from __future__ import annotations

import csv
import math
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TABLES = Path(__file__).resolve().parent / "tables"
"""The measured tables shipped with moesim."""


@dataclass(frozen=True)
class KernelTables:
    """One device's measurements, as samples: seconds are the measured medians."""

    folder: Path
    copy_bytes_per_s: float
    gemm: list[tuple[int, int, int, float]]
    """(rows, inner, cols, seconds) of bf16 GEMMs."""
    fp8_speedup: list[tuple[int, int, int, float]] = field(default_factory=list)
    """(rows, inner, cols, fp8 speedup over bf16) of plain GEMMs."""
    grouped: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    """(groups, rows per group, inner, cols, seconds) of bf16 grouped GEMMs."""
    grouped_fp8: list[tuple[int, int, int, int, float, float, float]] = field(default_factory=list)
    """(groups, rows per group, inner, cols, bf16 seconds, fp8 seconds, backward over forward bf16)."""
    ffn_backward: list[tuple[int, int, int, float, float]] = field(default_factory=list)
    """(rows, hidden, expert FFN size, forward seconds, backward seconds) of a SwiGLU FFN."""
    attention: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    """(batch, heads, sequence, head size, seconds) of causal FlashAttention forward."""
    attention_in_stream: list[tuple[str, int, int, int, int, int, float]] = field(default_factory=list)
    """(kind, sequences, query heads, KV heads, query tokens a sequence, context, seconds in a busy stream) of
    scaled dot-product attention, 128-wide heads: 'decode' reads a KV cache, 'prefill' is causal over a whole prompt
    (`attention_in_stream.csv`, from `moesim.validation.stream_kernels`)."""
    in_stream: list[tuple[str, int, int, int, int, float, float]] = field(default_factory=list)
    """(table, groups, rows per group, inner, cols, the table's seconds, seconds in a busy stream) of the plain
    ('gemm_bf16') and grouped ('grouped') GEMMs timed again back to back in a stream (`in_stream_bf16.csv`, from
    `moesim.validation.stream_kernels`)."""

    @property
    def name(self) -> str:
        return self.folder.name


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_tables(folder: Path) -> KernelTables:
    """The tables in `folder` (see the module docstring)."""
    copy = json.loads((folder / "hbm_copy.json").read_text())
    gemm = [
        (int(r["rows"]), int(r["inner"]), int(r["cols"]), float(r["seconds"])) for r in _rows(folder / "gemm_bf16.csv")
    ]
    if not gemm:
        raise FileNotFoundError(f"{folder}: no gemm_bf16.csv")
    return KernelTables(
        folder=folder,
        copy_bytes_per_s=float(copy["copy_bytes_read_plus_written"]) / float(copy["seconds"]),
        gemm=gemm,
        fp8_speedup=[
            (int(r["rows"]), int(r["inner"]), int(r["cols"]), float(r["fp8_speedup"]))
            for r in _rows(folder / "gemm_fp8_vs_bf16.csv")
        ],
        grouped=[
            (int(r["groups"]), int(r["rows_per_group"]), int(r["inner"]), int(r["cols"]), float(r["grouped_seconds"]))
            for r in _rows(folder / "grouped_gemm_uniform_bf16.csv")
        ],
        grouped_fp8=[
            (
                int(r["groups"]),
                int(r["rows_per_group"]),
                int(r["inner"]),
                int(r["cols"]),
                float(r["bf16_seconds"]),
                float(r["fp8_seconds"]),
                float(r["backward_over_forward_bf16"]),
            )
            for r in _rows(folder / "grouped_gemm_fp8_and_backward.csv")
        ],
        ffn_backward=[
            (
                int(r["rows"]),
                int(r["hidden"]),
                int(r["expert_ffn"]),
                float(r["forward_seconds"]),
                float(r["backward_seconds"]),
            )
            for r in _rows(folder / "ffn_backward_bf16.csv")
        ],
        attention=[
            (int(r["batch"]), int(r["heads"]), int(r["seq_len"]), int(r["head_dim"]), float(r["seconds"]))
            for r in _rows(folder / "attention_sdpa_bf16.csv")
        ],
        attention_in_stream=[
            (
                r["kind"],
                int(r["sequences"]),
                int(r["heads"]),
                int(r["kv_heads"]),
                int(r["queries"]),
                int(r["context"]),
                float(r["stream_seconds"]),
            )
            for r in _rows(folder / "attention_in_stream.csv")
        ],
        in_stream=[
            (
                r["table"],
                int(r["groups"]),
                int(r["rows"]),
                int(r["inner"]),
                int(r["cols"]),
                float(r["table_seconds"]),
                float(r["stream_seconds"]),
            )
            for r in _rows(folder / "in_stream_bf16.csv")
        ],
    )


def shipped_tables(name: str) -> Optional[KernelTables]:
    """The shipped tables of folder `name` (for example 'h200-2026-11-26'), or None."""
    folder = TABLES / name
    return read_tables(folder) if folder.is_dir() else None


def causal_attention_flops(batch: int, heads: int, sequence: int, head_dim: int) -> float:
    """FLOPs of causal attention's forward as the tables count them: 4 b h s^2 d, halved by the mask."""
    return 4.0 * batch * heads * sequence**2 * head_dim / 2.0


def causal_query_blocks(batch: float, heads: float, sequence: float) -> float:
    """Query blocks (`ATTENTION_BLOCK` queries of a head) of a causal attention over `batch` prompts."""
    from moesim.sim.compute import ATTENTION_BLOCK

    return batch * heads * math.ceil(sequence / ATTENTION_BLOCK)
