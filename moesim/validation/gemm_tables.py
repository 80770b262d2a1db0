"""moesim's GEMM model beside aiconfigurator's measured H100 GEMMs: bf16, FP8 per-tensor and FP8 blockwise.

The table (`validation/kernels/gemm_h100_sglang.csv.gz`, `benchmarks/extract_gemm_tables.py`) times SGLang
0.5.14's GEMMs on one H100 SXM over 22 x 22 weight shapes at 256 to 65,536 rows: bf16 through PyTorch's linear
(cuBLAS), FP8 with per-tensor scales through sgl-kernel's `fp8_scaled_mm` (CUTLASS), FP8 with 1x128 activation
and 128x128 weight blocks through DeepGEMM. Its weight shapes are split by the `gemm_tables` draw
(`moesim.validation.held_out`, fixed before any model change looked at the table): errors quoted as the model's
are those of the held-out shapes; development shapes are for finding what is wrong.

    python -m moesim.validation.gemm_tables [--held-out]   # error summary by format and size, development rows
    python -m moesim.validation.gemm_tables --ship         # write the FP8 table moesim reads, and its errors
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from moesim.cluster.hardware import gpu_preset
from moesim.cost import CostModel, model_for_gpu
from moesim.cost.fp8_gemms import errors_path, read_table, table_path
from moesim.validation.held_out import GEMM_TABLES, is_held_out_gemm

FORMATS = ("bfloat16", "fp8", "fp8_block")
FP8_KERNEL = "fp8_block"
"""The FP8 GEMMs moesim's `gemm: fp8` stands for: e4m3 with 1x128 / 128x128 block scales (DeepSeek-V3's recipe),
as DeepGEMM runs them."""
SIZE_BINS = ((0.0, 0.05), (0.05, 0.2), (0.2, 1.0), (1.0, float("inf")))
"""TFLOP of a GEMM (2 m n k): where the error is read apart."""


@dataclass(frozen=True)
class GemmRow:
    dtype: str
    kernel: str
    m: int
    n: int
    k: int
    seconds: float

    @property
    def tflop(self) -> float:
        return 2.0 * self.m * self.n * self.k / 1e12


@lru_cache(maxsize=2)
def gemm_rows(gpu: str = "h100") -> tuple[GemmRow, ...]:
    """A GPU's measured GEMMs (`h100` or `h200`)."""
    with gzip.open(GEMM_TABLES / f"gemm_{gpu}_sglang.csv.gz", "rt") as handle:
        return tuple(
            GemmRow(
                row["dtype"], row["kernel"], int(row["m"]), int(row["n"]), int(row["k"]), float(row["time_us"]) / 1e6
            )
            for row in csv.DictReader(handle)
        )


def split(rows: tuple[GemmRow, ...], held_out: bool) -> list[GemmRow]:
    """The development rows (held_out False) or the held-out ones."""
    return [row for row in rows if is_held_out_gemm(row.n, row.k) == held_out]


def predicted_seconds(cost: CostModel, row: GemmRow) -> float:
    """moesim's time for the row's GEMM: `[m x k] @ [k x n]` (FP8 either way: moesim has one FP8 GEMM model)."""
    return float(cost.gemm_seconds(row.m, row.k, row.n, fp8=row.dtype != "bfloat16"))


def errors(cost: CostModel, rows: list[GemmRow]) -> np.ndarray:
    """Signed relative errors, predicted / measured - 1."""
    return np.array([predicted_seconds(cost, row) / row.seconds - 1.0 for row in rows])


def summary(
    cost: CostModel, rows: list[GemmRow], dtype: str, low: float = 0.0, high: float = float("inf")
) -> Optional[dict]:
    """Median and p90 of |error|, and the median signed error, of the rows of one format in a size bin."""
    chosen = [row for row in rows if row.dtype == dtype and low <= row.tflop < high]
    if not chosen:
        return None
    signed = errors(cost, chosen)
    return {
        "rows": len(chosen),
        "median": float(np.median(np.abs(signed))),
        "p90": float(np.percentile(np.abs(signed), 90)),
        "signed_median": float(np.median(signed)),
    }


def report(cost: CostModel, held_out: bool = False) -> str:
    rows = split(gemm_rows(), held_out)
    lines = [f"{'format':10s} {'TFLOP':>12s} {'rows':>6s} {'median':>7s} {'p90':>7s} {'signed':>7s}"]
    for dtype in FORMATS:
        for low, high in SIZE_BINS + ((0.0, float("inf")),):
            found = summary(cost, rows, dtype, low, high)
            if found:
                label = f"{low:g}-{high:g}" if high != float("inf") or low else "all"
                lines.append(
                    f"{dtype:10s} {label:>12s} {found['rows']:6d} {found['median']:7.1%} {found['p90']:7.1%} "
                    f"{found['signed_median']:+7.1%}"
                )
    return "\n".join(lines)


TRAINING_DOMAIN = {"rows": 1024, "inner": 256, "cols": 256}
"""The GEMMs a training step runs (fixed before the held-out rows were read): 1,024 rows or more, weights of 256 or
more a side. The error quoted for the shipped table is on the held-out weight shapes in this domain."""


def in_training_domain(row: GemmRow) -> bool:
    return row.m >= TRAINING_DOMAIN["rows"] and row.k >= TRAINING_DOMAIN["inner"] and row.n >= TRAINING_DOMAIN["cols"]


def ship(gpu: str = "h100") -> dict:
    """Write the development rows of a GPU's DeepGEMM blockwise FP8 GEMMs as the table moesim reads
    (`moesim.cost.fp8_gemms.table_path`) and its errors on the held-out weight shapes beside it; returns the errors."""
    rows = gemm_rows(gpu)
    development = [row for row in split(rows, False) if row.dtype == FP8_KERNEL]
    lines = ["m,n,k,time_us"] + [f"{row.m},{row.n},{row.k},{row.seconds * 1e6:.4f}" for row in development]
    with gzip.GzipFile(table_path(gpu), "wb", mtime=0) as handle:  # mtime 0: the same bytes again
        handle.write(("\n".join(lines) + "\n").encode())
    table = read_table(table_path(gpu), "")
    held = [row for row in split(rows, True) if row.dtype == FP8_KERNEL and in_training_domain(row)]
    signed = np.array([float(table.seconds(row.m, row.k, row.n)) / row.seconds - 1.0 for row in held])
    errors = {
        "rows": len(held),
        "median": float(np.median(np.abs(signed))),
        "p90": float(np.percentile(np.abs(signed), 90)),
        "signed_median": float(np.median(signed)),
        "domain": TRAINING_DOMAIN,
        "source": f"validation/kernels/gemm_{gpu}_sglang.csv.gz, held-out weight shapes (validation/held_out/)",
    }
    errors_path(gpu).write_text(json.dumps({"held_out": errors}, indent=1) + "\n")
    return errors


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--ship" in args:
        for gpu in ("h100", "h200"):
            errors = ship(gpu)
            print(
                f"{table_path(gpu).name}: held-out weight shapes {errors['median']:.1%} median, {errors['p90']:.1%} "
                f"p90 ({errors['rows']} rows, signed {errors['signed_median']:+.1%})"
            )
    print(report(model_for_gpu(gpu_preset("H100-SXM")), "--held-out" in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
