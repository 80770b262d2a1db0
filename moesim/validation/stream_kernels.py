"""The shipped kernel tables' GEMMs timed again, two ways: as the tables timed them and inside a busy stream.

The kernel tables (`moesim/cost/tables/`) time each kernel between host synchronisations, so a small kernel's
figure holds the launch and the synchronisation too; a model's kernels run back to back in a stream the host keeps
ahead of. The profile builder took an assumed `TIMING_OVERHEAD_S` off every table kernel to get there. This runs
every plain and grouped bf16 GEMM of a device's tables both ways on the device itself: host-synchronised (median
of 10 after 3 warm-ups, as the tables) and in a stream (20 calls back to back behind a spin kernel, between two
CUDA events), so the difference is measured, kernel by kernel, not assumed.

It also times scaled dot-product attention where serving runs it and the tables do not (they hold four long
causal prefills): decode batches reading KV caches of 512-8,192 tokens, and prompts of 512-8,192 tokens.

`python -m moesim.validation.stream_kernels [--tables DIR] [--out validation] [--attention-only]` writes
<out>/<device>/kernels_in_stream.csv and attention_in_stream.csv; `--quick` times small shapes on the CPU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from moesim.validation.calibrate import device_name
from moesim.validation.single_device import HOST_AHEAD_CYCLES
from moesim.validation.timing import median_seconds, seconds_in_stream

SYNCED_REPEATS, WARMUPS, STREAM_CALLS = 10, 3, 20


def _synced(work: Callable[[], object], device: torch.device) -> float:
    """The tables' way: each run between host synchronisations, wall time, median of 10 after 3 warm-ups."""
    for _ in range(WARMUPS - 1):  # `median_seconds` runs the third
        work()
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return median_seconds(work, SYNCED_REPEATS, synchronize)


def _in_stream(work: Callable[[], object], device: torch.device) -> float:
    """A model's way: calls back to back, queued while the GPU spins, device time between two events per call."""
    return seconds_in_stream(work, device, STREAM_CALLS, HOST_AHEAD_CYCLES)


def _rows(tables: Path, quick: bool) -> list[dict[str, str]]:
    """The tables' plain GEMMs (gemm_bf16.csv) and grouped GEMMs (grouped_gemm_uniform_bf16.csv) as work items."""
    if quick:
        return [
            {"table": "gemm_bf16", "rows": "16", "inner": "256", "cols": "512", "groups": "1", "seconds": "nan"},
            {"table": "grouped", "rows": "16", "inner": "256", "cols": "512", "groups": "4", "seconds": "nan"},
        ]
    work = []
    with open(tables / "gemm_bf16.csv") as handle:
        for row in csv.DictReader(handle):
            work.append(
                {"table": "gemm_bf16", **{k: row[k] for k in ("rows", "inner", "cols", "seconds")}, "groups": "1"}
            )
    with open(tables / "grouped_gemm_uniform_bf16.csv") as handle:
        for row in csv.DictReader(handle):
            work.append(
                {
                    "table": "grouped",
                    "rows": row["rows_per_group"],
                    "inner": row["inner"],
                    "cols": row["cols"],
                    "groups": row["groups"],
                    "seconds": row["grouped_seconds"],
                }
            )
    return work


def _kernel(item: dict[str, str], device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
    """One table row's GEMM on fresh random operands: `torch._grouped_mm` on a GPU (the executor's kernel), the
    groups one after another on the CPU."""
    rows, inner, cols, groups = (int(item[k]) for k in ("rows", "inner", "cols", "groups"))
    x = torch.randn(rows * groups, inner, device=device, dtype=dtype)
    if item["table"] != "grouped":
        w = torch.randn(inner, cols, device=device, dtype=dtype)
        return lambda: x @ w
    weights = torch.randn(groups, inner, cols, device=device, dtype=dtype)
    if device.type == "cuda":
        offsets = torch.arange(1, groups + 1, device=device, dtype=torch.int32) * rows
        return lambda: torch._grouped_mm(x, weights, offs=offsets)
    return lambda: [x[g * rows : (g + 1) * rows] @ weights[g] for g in range(groups)]


def measure(tables: Path, device: torch.device, quick: bool = False) -> list[dict[str, object]]:
    """Every table GEMM, timed both ways on `device` (bf16 on a GPU, fp32 on the CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results: list[dict[str, object]] = []
    for item in _rows(tables, quick):
        work = _kernel(item, device, dtype)
        synced, stream = _synced(work, device), _in_stream(work, device)
        del work
        table = float(item["seconds"])
        shape = {k: int(item[k]) for k in ("groups", "rows", "inner", "cols")}
        results.append(
            {
                "table": item["table"],
                **shape,
                "table_seconds": table,
                "synced_seconds": synced,
                "stream_seconds": stream,
            }
        )
        label = " x ".join(f"{value:6}" for value in shape.values())
        print(
            f"{item['table']:9} {label}: table {table * 1e6:9.1f} us, synced {synced * 1e6:9.1f}, "
            f"in stream {stream * 1e6:9.1f}",
            flush=True,
        )
    return results


ATTENTION_CASES = [
    *(
        ("decode", batch, 32, 8, 1, context)
        for batch in (1, 4, 16, 64, 256, 1024)
        for context in (512, 2048, 8192)
        if batch * context <= 2**21  # caches up to 8.6 GB
    ),
    *(("decode", batch, 32, 4, 1, context) for batch in (1, 64, 1024) for context in (512, 4096)),
    *(("prefill", prompts, 32, 8, length, length) for prompts, length in ((1, 512), (1, 2048), (1, 8192), (16, 512))),
    *(("prefill", prompts, 32, 4, length, length) for prompts, length in ((1, 2048), (4, 4096))),
]
"""(kind, sequences, query heads, KV heads, query tokens a sequence, context) of the attention kernels timed: decode
reads a KV cache of `context` tokens for one query token (GQA's heads of a group as its queries, as the serving
check runs them); prefill is causal over a whole prompt."""
QUICK_ATTENTION = [("decode", 2, 4, 2, 1, 64), ("prefill", 1, 4, 2, 32, 32)]


def _attention_kernel(case: tuple, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
    """One attention case's scaled dot-product attention call on fresh random operands (128-wide heads)."""
    kind, sequences, heads, kv_heads, queries, context = case
    width = 128
    keys = torch.randn(sequences, kv_heads, context, width, device=device, dtype=dtype)
    values = torch.randn_like(keys)
    if kind == "decode":
        query = torch.randn(sequences, kv_heads, heads // kv_heads, width, device=device, dtype=dtype)
        return lambda: F.scaled_dot_product_attention(query, keys, values)
    query = torch.randn(sequences, heads, queries, width, device=device, dtype=dtype)
    return lambda: F.scaled_dot_product_attention(query, keys, values, is_causal=True, enable_gqa=True)


def measure_attention(device: torch.device, quick: bool = False) -> list[dict[str, object]]:
    """Every attention case in a busy stream (and host-synchronised, as the tables time kernels)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results: list[dict[str, object]] = []
    for case in QUICK_ATTENTION if quick else ATTENTION_CASES:
        work = _attention_kernel(case, device, dtype)
        synced, stream = _synced(work, device), _in_stream(work, device)
        del work
        names = ("kind", "sequences", "heads", "kv_heads", "queries", "context")
        results.append({**dict(zip(names, case)), "synced_seconds": synced, "stream_seconds": stream})
        print(f"attention {case}: synced {synced * 1e6:9.1f} us, in stream {stream * 1e6:9.1f}", flush=True)
    return results


ROW_SWEEP = (16, 64, 96, 112, 120, 127, 128, 129, 136, 144, 160, 192, 224, 256, 384, 512)
"""Rows per group of the grouped-GEMM sweep around 128, where the serving check's Mixtral iterations at 1,024
routed rows ran their experts 1.6x slower than at 896 or 1,792."""
SKEWED_ROWS = ((137, 128, 135, 141, 129, 124, 101, 129), (207, 220, 220, 213, 220, 232, 243, 237))
"""Two of the serving check's measured Mixtral loads (1,024 and 1,792 rows over 8 experts)."""


def _grouped_call(x: torch.Tensor, weights: torch.Tensor, load: tuple[int, ...]) -> Callable[[], object]:
    """`x`'s rows, `load[g]` of them for group g, through their groups' weights: one grouped GEMM on a GPU."""
    if x.device.type == "cuda":
        offsets = torch.tensor(load, device=x.device).cumsum(0).to(torch.int32)
        return lambda: torch._grouped_mm(x, weights, offs=offsets)
    bounds = [0, *torch.tensor(load).cumsum(0).tolist()]
    return lambda: [x[a:b] @ weights[g] for g, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def measure_row_sweep(device: torch.device, quick: bool = False) -> list[dict[str, object]]:
    """Mixtral 8x7B's expert projections (8 groups; up 4096 x 28672, down 14336 x 4096) at `ROW_SWEEP` rows per
    group and at two measured skewed loads, in a busy stream."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loads = [(rows,) * 8 for rows in ((16, 128) if quick else ROW_SWEEP)] + ([] if quick else list(SKEWED_ROWS))
    shapes = ((64, 128),) if quick else ((4096, 28672), (14336, 4096))
    results: list[dict[str, object]] = []
    for inner, cols in shapes:
        weights = torch.randn(8, inner, cols, device=device, dtype=dtype)
        for load in loads:
            work = _grouped_call(torch.randn(sum(load), inner, device=device, dtype=dtype), weights, load)
            stream = _in_stream(work, device)
            label = "-".join(str(r) for r in load)
            results.append({"inner": inner, "cols": cols, "rows": label, "stream_seconds": stream})
            print(f"grouped 8 x [{label}] x {inner} x {cols}: in stream {stream * 1e6:9.1f} us", flush=True)
    return results


def _write(path: Path, results: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=None, help="kernel table folder (default: the shipped one of this GPU)")
    parser.add_argument("--out", default="validation", help="folder of the device reports")
    parser.add_argument("--quick", action="store_true", help="two small shapes on the CPU, to try it")
    parser.add_argument("--attention-only", action="store_true", help="time the attention kernels only")
    parser.add_argument("--row-sweep", action="store_true", help="Mixtral's grouped GEMMs around 128 rows a group")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    name = device_name(device, 1)
    shipped = Path(__file__).resolve().parents[1] / "cost" / "tables"
    folder = "h200-2026-11-26" if "H200" in name else "h100-2026-11-26"
    tables = Path(args.tables) if args.tables else shipped / folder
    out = Path(args.out, name)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        if args.row_sweep:
            _write(out / "grouped_rows_in_stream.csv", measure_row_sweep(device, args.quick))
            return 0
        attention = measure_attention(device, args.quick)
        _write(out / "attention_in_stream.csv", attention)
        if not args.attention_only:
            results = measure(tables, device, args.quick)
            _write(out / "kernels_in_stream.csv", results)
            print(f"{len(results)} kernels -> {out / 'kernels_in_stream.csv'} (tables: {tables})")
    print(f"{len(attention)} attention kernels -> {out / 'attention_in_stream.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
