"""The measured kernel tables of one device, read into plain samples the cost-model fits take.

A folder holds what `tables/README.md` lists (the team's shared measurements, one folder
per device and date): plain and fp8 GEMMs, grouped expert GEMMs (uniform loads; on the
H100 also fp8 and the backward), a SwiGLU FFN's forward and backward, FlashAttention,
and an HBM copy. Every file but `gemm_bf16.csv` and `hbm_copy.json` is optional.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Optional

from moesim.cost.model import ATTENTION_BLOCK

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


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows as mappings of column to text (empty when the file is absent)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _table(
    path: Path,
    text: tuple[str, ...] = (),
    whole: tuple[str, ...] = (),
    real: tuple[str, ...] = (),
    keep: Callable[[str, int], bool] = lambda table, index: True,
) -> list[tuple]:  # type: ignore[type-arg]
    """A CSV's rows as tuples of the named columns, in that order: `text` as read, `whole` as integers, `real` as
    floats (empty when the file is absent); only the rows `keep(table, row number from 0)` keeps."""
    return [
        tuple(r[c] for c in text) + tuple(int(r[c]) for c in whole) + tuple(float(r[c]) for c in real)
        for index, r in enumerate(csv_rows(path))
        if keep(path.stem, index)
    ]


def read_tables(
    folder: Path, rows: Optional[Mapping[str, Collection[int]]] = None, held_out: bool = False
) -> KernelTables:
    """The tables in `folder` (see the module docstring). With `rows` (table name -> row numbers, from 0: a held-out
    draw's), the tables without those rows, or with `held_out` those rows alone."""
    chosen = rows or {}

    def keep(table: str, index: int) -> bool:
        return (index in chosen.get(table, ())) == held_out

    copy = json.loads((folder / "hbm_copy.json").read_text())
    gemm = _table(folder / "gemm_bf16.csv", whole=("rows", "inner", "cols"), real=("seconds",), keep=keep)
    if not gemm and not held_out:
        raise FileNotFoundError(f"{folder}: no gemm_bf16.csv")
    grouped = ("groups", "rows_per_group", "inner", "cols")
    return KernelTables(
        folder=folder,
        copy_bytes_per_s=float(copy["copy_bytes_read_plus_written"]) / float(copy["seconds"]),
        gemm=gemm,
        fp8_speedup=_table(
            folder / "gemm_fp8_vs_bf16.csv", whole=("rows", "inner", "cols"), real=("fp8_speedup",), keep=keep
        ),
        grouped=_table(folder / "grouped_gemm_uniform_bf16.csv", whole=grouped, real=("grouped_seconds",), keep=keep),
        grouped_fp8=_table(
            folder / "grouped_gemm_fp8_and_backward.csv",
            whole=grouped,
            real=("bf16_seconds", "fp8_seconds", "backward_over_forward_bf16"),
            keep=keep,
        ),
        ffn_backward=_table(
            folder / "ffn_backward_bf16.csv",
            whole=("rows", "hidden", "expert_ffn"),
            real=("forward_seconds", "backward_seconds"),
            keep=keep,
        ),
        attention=_table(
            folder / "attention_sdpa_bf16.csv",
            whole=("batch", "heads", "seq_len", "head_dim"),
            real=("seconds",),
            keep=keep,
        ),
        attention_in_stream=_table(
            folder / "attention_in_stream.csv",
            text=("kind",),
            whole=("sequences", "heads", "kv_heads", "queries", "context"),
            real=("stream_seconds",),
            keep=keep,
        ),
        in_stream=_table(
            folder / "in_stream_bf16.csv",
            text=("table",),
            whole=("groups", "rows", "inner", "cols"),
            real=("table_seconds", "stream_seconds"),
            keep=keep,
        ),
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
    return batch * heads * math.ceil(sequence / ATTENTION_BLOCK)
