"""Extract aiconfigurator's measured H100 and H200 GEMMs into CSVs moesim checks its GEMM model against (issue 25).

Writes `validation/kernels/gemm_h100_sglang.csv.gz` and `gemm_h200_sglang.csv.gz`: SGLang 0.5.14's GEMMs on one
H100 SXM and one H200 SXM as aiconfigurator's collector timed them, bf16 (`torch` linear, cuBLAS), FP8 with
per-tensor scales (sgl-kernel's `fp8_scaled_mm`) and FP8 with 1x128 / 128x128 block scales (DeepGEMM's
`gemm_nt_f8f8bf16`), on a grid of 22 x 22 weight shapes (n x k) at the training-sized row counts (m >= 256; the
table goes down to 1 row). Columns: `dtype`, `kernel`, `m`, `n`, `k`, `time_us` (the table's `latency` is ms).

Source: github.com/ai-dynamo/aiconfigurator (Apache-2.0), `aic-core/src/aiconfigurator_core/systems/data/<gpu>/
gemm/sglang/0.5.14/gemm_perf.parquet` (`h100_sxm`, `h200_sxm`), at the commit written to
`validation/kernels/AICONFIGURATOR_COMMIT`. It needs pandas and pyarrow (not moesim's dependencies). It never
opens the repository's `silicon_sample.csv`.

    python benchmarks/extract_gemm_tables.py PATH_TO_AICONFIGURATOR_GIT_DIR
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

from extract_aiconfigurator_tables import DATA, _git  # the sibling script: its git reader and data folder

OUT = Path(__file__).resolve().parent.parent / "validation" / "kernels"
TABLES = {gpu: f"{gpu}_sxm/gemm/sglang/0.5.14/gemm_perf.parquet" for gpu in ("h100", "h200")}
FEWEST_ROWS = 256
"""Rows below this are decode-sized GEMMs (weights-bound), not what a training step runs."""


def gemm_rows(repo: str, table: str) -> "object":
    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(_git(repo, "show", f"HEAD:{DATA}/{table}")))
    frame = frame[frame["m"] >= FEWEST_ROWS]
    frame = frame.rename(columns={"gemm_dtype": "dtype", "kernel_source": "kernel"})
    frame["time_us"] = (frame["latency"] * 1e3).round(4)
    frame = frame[["dtype", "kernel", "m", "n", "k", "time_us"]]
    return frame.sort_values(["dtype", "m", "n", "k"]).reset_index(drop=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    repo = argv[0]
    OUT.mkdir(parents=True, exist_ok=True)
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    for gpu, table in TABLES.items():
        text = gemm_rows(repo, table).to_csv(index=False, lineterminator="\n")
        name = f"gemm_{gpu}_sglang.csv.gz"
        with gzip.GzipFile(OUT / name, "wb", mtime=0) as handle:  # mtime 0: the same bytes again
            handle.write(text.encode())
        print(f"validation/kernels/{name} ({text.count(chr(10)) - 1:,} rows) at {commit[:8]}")
    (OUT / "AICONFIGURATOR_COMMIT").write_text(commit + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
