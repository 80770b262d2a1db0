"""Held-out draws: which measurements moesim may develop and fit on, and which it keeps to judge the shipped model.

Every validation set is split once, by a rule fixed here, and the split is recorded under `validation/held_out/`
before any model change looks at the data (issue 27; the serving runs' split is the one issue 26 asks for). A
measurement's key goes through SHA-256 with its draw's salt; the rule decides from the digests alone, never from
the measured values:

- **serving runs** (`../shared/serving-measurements/aiconfigurator-silicon-given.csv`, 2,606 runs): a run is held
  out when its `id`'s digest falls in the lower half, as NVIDIA split the full file (one deployment at one
  concurrency per row). Develop and fit on the rest; quote errors on these.
- **kernel shapes** (`moesim/cost/tables/<device>/`): whole shapes, on both GPUs at once. The GEMM tables time the
  up (hidden x 2 ffn) and down (ffn x hidden) projections of three models' experts; of those three FFN shapes the
  one with the lowest digest is held out, every table's rows of its two GEMMs (dense, grouped, fp8, in-stream,
  backward) with it. Of the attention head layouts the in-stream tables time (query heads / KV heads), the one with
  the lowest digest is held out likewise. The shipped profiles were fitted to every row before this draw: until
  they are refitted without the held-out rows, their errors there are development figures.
- **serving iterations** (the serving check, `serving_check.py`): the 38 iterations committed so far were looked
  at while the model changed, so they are development. The next GPU run also measures `SERVING_ITERATIONS`, drawn
  here from a grid of decode batches, contexts and prompts (the 16 with the lowest digests, none of them a
  development case): those are its held-out rows.
- **network tables** (`validation/network/*.csv`: measured collectives and all-to-alls): a row is held out when
  the digest of `<table>:<ranks>:<tokens or bytes>` falls in the lowest 30% (rows that differ only in the SMs a
  kernel held share a key, and fall together). Fit on the rest; quote errors on these.
- **GEMM tables** (`validation/kernels/gemm_<gpu>_sglang.csv.gz`: aiconfigurator's measured H100 and H200 GEMMs,
  bf16 and FP8): whole weight shapes `n x k` whose digest falls in the lowest 30%, every row count, format and GPU
  of them, so a held-out error is that of a weight shape the model never saw. Drawn before any model change looked
  at the tables.

    python -m moesim.validation.held_out          # write validation/held_out/ (the record; a test holds it)
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from moesim.cost.kernel_tables import csv_rows
from moesim.validation.serving_cases import GPU_CASES, IterationCase

REPO = Path(__file__).resolve().parent.parent.parent
RECORD = REPO / "validation" / "held_out"
SERVING_RUNS = REPO.parent / "shared" / "serving-measurements" / "aiconfigurator-silicon-given.csv"
TABLES = REPO / "moesim" / "cost" / "tables"
NETWORK_TABLES = REPO / "validation" / "network"
GEMM_TABLES = REPO / "validation" / "kernels"


@dataclass(frozen=True)
class Draw:
    """One split: its salt, what a key is, and what is held out: the keys whose digest falls below `share`, or the
    `count` keys with the lowest digests (of each family, for kernel shapes) where there are only a few."""

    name: str
    salt: str
    key: str
    source: str
    share: float = 0.0
    count: int = 0


DRAWS = {
    "serving_runs": Draw(
        "serving_runs",
        "moesim-held-out-2026-12-07/serving-runs",
        "a run's `id`",
        "shared/serving-measurements/aiconfigurator-silicon-given.csv (beside the checkout)",
        share=0.5,
    ),
    "kernel_shapes": Draw(
        "kernel_shapes",
        "moesim-held-out-2026-12-07/kernel-shapes",
        "an expert FFN shape `hidden x ffn` (its up and down GEMMs together); an attention layout `heads/kv_heads`",
        "moesim/cost/tables/<device>/",
        count=1,
    ),
    "serving_iterations": Draw(
        "serving_iterations",
        "moesim-held-out-2026-12-07/serving-iterations",
        "an iteration case's label (model, decode batch @ context, prompts x tokens)",
        "the next GPU run of moesim.validation.serving_check",
        count=16,
    ),
    "network_tables": Draw(
        "network_tables",
        "moesim-held-out-2026-12-07/network-tables",
        "`<table>:<ranks>:<tokens or bytes>`",
        "validation/network/*.csv (measured all-to-all and collective tables)",
        share=0.3,
    ),
    "gemm_tables": Draw(
        "gemm_tables",
        "moesim-held-out-2026-12-07/gemm-tables",
        "a weight shape `n x k` (all its row counts and formats together)",
        "validation/kernels/gemm_<gpu>_sglang.csv.gz (aiconfigurator's measured H100 and H200 GEMMs, SGLang 0.5.14)",
        share=0.3,
    ),
}
"""The draws, fixed: changing a salt or a share is drawing again, which the record's test catches."""


def digest(draw: Draw, key: str) -> float:
    """Where `key` falls in [0, 1) under `draw`'s salt: the first 8 bytes of SHA-256 of `<salt>:<key>`."""
    value = hashlib.sha256(f"{draw.salt}:{key}".encode()).digest()[:8]
    return int.from_bytes(value, "big") / 2**64


def held_out(draw: Draw, key: str) -> bool:
    """Whether a row keyed `key` is held out by a share-of-keys draw (serving runs, network tables)."""
    return digest(draw, key) < draw.share


def lowest(draw: Draw, keys: Iterable[str]) -> list[str]:
    """The draw's `count` keys with the lowest digests: a draw of whole groups where there are only a few."""
    return sorted(set(keys), key=lambda key: digest(draw, key))[: draw.count]


# ---------------------------------------------------------------- serving runs
def serving_run_split(path: Path = SERVING_RUNS) -> dict[str, list[str]]:
    """The given serving runs' ids, development and held out (only the `id` column is read)."""
    with path.open(newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: ids repeat; a split by id needs unique ids")
    draw = DRAWS["serving_runs"]
    return {
        "development": sorted(key for key in ids if not held_out(draw, key)),
        "held_out": sorted(key for key in ids if held_out(draw, key)),
    }


# ---------------------------------------------------------------- kernel shapes
def ffn_of(inner: int, cols: int, ffns: Iterable[tuple[int, int]]) -> Optional[str]:
    """The expert FFN `hidden x ffn` a GEMM of `inner x cols` belongs to: its up projection (hidden x 2 ffn, gate and
    up fused) or its down projection (ffn x hidden); None for a GEMM of no model's FFN."""
    for hidden, ffn in ffns:
        if (inner, cols) in ((hidden, 2 * ffn), (ffn, hidden)):
            return f"{hidden}x{ffn}"
    return None


def table_ffns(folder: Path) -> list[tuple[int, int]]:
    """The expert FFN shapes a device's tables time (`ffn_backward_bf16.csv` names them)."""
    return sorted({(int(row["hidden"]), int(row["expert_ffn"])) for row in csv_rows(folder / "ffn_backward_bf16.csv")})


def kernel_row_key(table: str, row: dict[str, str], ffns: list[tuple[int, int]]) -> Optional[str]:
    """The whole-shape key of one table row, or None where the row has no shape the draw splits."""
    if "inner" in row:
        shape = ffn_of(int(row["inner"]), int(row["cols"]), ffns)
        return f"ffn {shape}" if shape else None
    if "expert_ffn" in row:
        return f"ffn {row['hidden']}x{row['expert_ffn']}"
    if table == "attention_in_stream" and "kv_heads" in row:
        return f"attention {row['heads']}/{row['kv_heads']}"
    return None


def kernel_shape_split() -> dict[str, object]:
    """The held-out shapes, and per device and table the rows they cover (row numbers, from 0, in file order)."""
    draw = DRAWS["kernel_shapes"]
    folders = sorted(path for path in TABLES.iterdir() if path.is_dir())
    keys_by_folder = {}
    for folder in folders:
        ffns = table_ffns(folder)
        keys_by_folder[folder.name] = {
            path.stem: [kernel_row_key(path.stem, row, ffns) for row in csv_rows(path)]
            for path in sorted(folder.glob("*.csv"))
        }
    every = {key for tables in keys_by_folder.values() for keys in tables.values() for key in keys if key}
    chosen = lowest(draw, sorted(key for key in every if key.startswith("ffn "))) + lowest(
        draw, sorted(key for key in every if key.startswith("attention "))
    )
    rows = {
        device: {
            table: [index for index, key in enumerate(keys) if key in chosen]
            for table, keys in tables.items()
            if any(key in chosen for key in keys)
        }
        for device, tables in keys_by_folder.items()
    }
    return {"shapes": sorted(every), "held_out_shapes": chosen, "held_out_rows": rows}


# ---------------------------------------------------------------- serving iterations
def iteration_grid() -> list[IterationCase]:
    """Iterations a serving engine runs, beyond the development cases: decode batches at contexts, prompt batches,
    and the two mixed."""
    cases = []
    for model in ("mixtral-8x7b", "qwen3-30b-a3b"):
        for decode in (0, 2, 8, 24, 48, 96, 192, 384, 768):
            for context in (1024, 3072, 6144) if decode else (0,):
                for prompts, tokens in ((0, 0), (1, 1024), (1, 3072), (4, 1024), (12, 1024)):
                    if decode or prompts:
                        cases.append(IterationCase(model, decode, context, prompts, tokens))
    development = set(GPU_CASES)
    return [case for case in cases if case not in development]


def _case_key(case: IterationCase) -> str:
    return f"{case.model}: {case.label}"


def held_out_iterations() -> list[IterationCase]:
    """The grid's iterations with the 16 lowest digests, in the grid's order."""
    grid = iteration_grid()
    chosen = set(lowest(DRAWS["serving_iterations"], map(_case_key, grid)))
    return [case for case in grid if _case_key(case) in chosen]


SERVING_ITERATIONS = held_out_iterations()
"""The held-out iterations the serving check's next GPU run measures (16 of the grid, by digest)."""


# ---------------------------------------------------------------- network tables
def network_row_key(row: dict[str, str]) -> str:
    """A measured network row's key: `<table>:<ranks>:<tokens or bytes>`."""
    return f"{row['table']}:{row['ranks']}:{row['tokens'] if 'tokens' in row else row['bytes']}"


def network_table_split(folder: Path = NETWORK_TABLES) -> dict[str, dict[str, object]]:
    """For each table file, its rows and the keys held out (sorted)."""
    draw = DRAWS["network_tables"]
    split: dict[str, dict[str, object]] = {}
    for path in sorted(folder.glob("*.csv")):
        keys = [network_row_key(row) for row in csv_rows(path)]
        chosen = sorted({key for key in keys if held_out(draw, key)})
        split[path.name] = {
            "rows": len(keys),
            "held_out_rows": sum(key in chosen for key in keys),
            "held_out": chosen,
        }
    return split


def is_held_out_network_row(row: dict[str, str]) -> bool:
    """Whether a measured network row is held out (the record's rule, applied to one row)."""
    return held_out(DRAWS["network_tables"], network_row_key(row))


# ---------------------------------------------------------------- GEMM tables
def gemm_shape_key(n: int | str, k: int | str) -> str:
    """A measured GEMM's key: its weight shape `n x k`."""
    return f"{int(n)}x{int(k)}"


def is_held_out_gemm(n: int | str, k: int | str) -> bool:
    """Whether a measured GEMM's weight shape is held out (the record's rule, applied to one row)."""
    return held_out(DRAWS["gemm_tables"], gemm_shape_key(n, k))


def gemm_table_split(folder: Path = GEMM_TABLES) -> dict[str, object]:
    """The tables' weight shapes (every GPU's table, one rule), and those held out (sorted)."""
    shapes: set[str] = set()
    tables = {}
    for path in sorted(folder.glob("gemm_*.csv.gz")):
        with gzip.open(path, "rt") as handle:
            rows = [gemm_shape_key(row["n"], row["k"]) for row in csv.DictReader(handle)]
        tables[path.name] = {"rows": len(rows), "held_out_rows": sum(held_out(DRAWS["gemm_tables"], s) for s in rows)}
        shapes.update(rows)
    chosen = [shape for shape in sorted(shapes) if held_out(DRAWS["gemm_tables"], shape)]
    return {"tables": tables, "shapes": len(shapes), "held_out_shapes": len(chosen), "held_out": chosen}


# ---------------------------------------------------------------- the record
def record() -> dict[str, dict]:
    """Every draw and what it holds out, as written to `validation/held_out/`."""
    documents: dict[str, dict] = {}
    for name, draw in DRAWS.items():
        documents[name] = {"draw": asdict(draw)}
    if SERVING_RUNS.exists():
        split = serving_run_split()
        documents["serving_runs"].update(
            rows=len(split["development"]) + len(split["held_out"]),
            development_rows=len(split["development"]),
            held_out_rows=len(split["held_out"]),
            held_out=split["held_out"],
        )
    documents["kernel_shapes"].update(kernel_shape_split())
    documents["serving_iterations"].update(
        development="the 38 iterations of validation/<device>/serving.json (looked at while the model changed)",
        held_out=[asdict(case) for case in SERVING_ITERATIONS],
    )
    documents["network_tables"].update(tables=network_table_split())
    documents["gemm_tables"].update(gemm_table_split())
    return documents


def main(argv: Optional[list[str]] = None) -> int:
    RECORD.mkdir(parents=True, exist_ok=True)
    if not SERVING_RUNS.exists():
        print(f"{SERVING_RUNS} not found: the serving runs' split is not written", file=sys.stderr)
    for name, document in record().items():
        if name == "serving_runs" and "held_out" not in document:
            continue
        (RECORD / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
        print(f"validation/held_out/{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
