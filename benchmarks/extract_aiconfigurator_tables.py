"""Extract the measured per-kernel tables moesim uses from aiconfigurator's database into CSV files (issue 26).

aiconfigurator (github.com/ai-dynamo/aiconfigurator, Apache-2.0) ships measured kernel tables by GPU, engine and
engine version as Parquet files under `aic-core/src/aiconfigurator_core/systems/data/<gpu>/<op>/<engine>/<version>/`.
moesim carries the rows it reads as CSV (`moesim/cost/engines/aiconfigurator/`, with their source commit), so that
moesim needs neither Parquet nor aiconfigurator. This script writes them again from a checkout of that repository;
it needs pandas and pyarrow (not moesim's dependencies: run it in an environment of its own). It never opens the
repository's `silicon_sample.csv` (measured serving runs, half of them held out to judge moesim).

    python benchmarks/extract_aiconfigurator_tables.py PATH_TO_AICONFIGURATOR_GIT_DIR
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "moesim" / "cost" / "engines" / "aiconfigurator"
DATA = "aic-core/src/aiconfigurator_core/systems/data"
GPUS = ("h100_sxm", "h200_sxm")
ENGINES = ("trtllm", "sglang", "vllm")


def _git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True).stdout


def _tables(repo: str, op: str, name: str) -> list[tuple[str, str, str, str]]:
    """(gpu, engine, version, path) of every `name` table of `op` for moesim's GPUs and engines."""
    found = []
    for path in _git(repo, "ls-tree", "-r", "--name-only", "HEAD", DATA).decode().split():
        parts = path[len(DATA) + 1 :].split("/")
        if len(parts) == 5 and parts[0] in GPUS and parts[1] == op and parts[2] in ENGINES and parts[4] == name:
            found.append((parts[0], parts[2], parts[3], path))
    return found


def _launch_mode(kernel_source: str) -> str:
    """How the kernel was launched: replayed in a CUDA graph, eagerly, or (TensorRT-LLM's table, one kind) either."""
    source = kernel_source.lower()
    return "graph" if source.endswith("_graph") else "eager" if source.endswith("_eager") else "any"


def custom_allreduce(repo: str) -> "object":
    """Every engine's all-reduce (its custom kernels, NCCL where the engine falls back to it), bf16, by launch mode
    (in a CUDA graph or eager), GPUs and elements; latency in microseconds."""
    import pandas as pd

    frames = []
    for gpu, engine, version, path in _tables(repo, "comm", "custom_allreduce_perf.parquet"):
        table = pd.read_parquet(io.BytesIO(_git(repo, "show", f"HEAD:{path}")))
        table = table[table["allreduce_dtype"] == "bfloat16"]
        frames.append(
            pd.DataFrame(
                {
                    "gpu": gpu,
                    "engine": engine,
                    "version": version,
                    "mode": table["kernel_source"].map(_launch_mode),
                    "gpus": table["num_gpus"].astype(int),
                    "elements": table["message_size"].astype(int),
                    "latency_us": (table["latency"] * 1e3).round(4),
                }
            )
        )
    return pd.concat(frames).sort_values(["gpu", "engine", "version", "mode", "gpus", "elements"])


ATTENTION_VERSIONS = {"trtllm": ("1.2.0rc5",), "sglang": ("0.5.6.post2", "0.5.9"), "vllm": ("0.14.0", "0.18.0")}
"""The measured versions of the decode-attention tables carried (the tables are large): those nearest the engines of
the given serving runs (TensorRT-LLM 0.8-1.3, SGLang 0.5.1-0.5.9, vLLM 0.11-0.18)."""


def generation_attention(repo: str) -> "object":
    """Each engine's decode attention kernel (its KV cache in bf16; full attention, no window), by batch, heads and
    KV heads a GPU, head size and cached tokens (`step`), for grouped-query attention (`gqa`) and DeepSeek's MLA
    (`mla`: its heads a GPU; the latent cache, 512 + 64 wide); latency in microseconds."""
    import pandas as pd

    frames = []
    for op, name, kind in (
        ("attention", "generation_attention_perf.parquet", "gqa"),
        ("mla", "generation_mla_perf.parquet", "mla"),
    ):
        for gpu, engine, version, path in _tables(repo, op, name):
            if version not in ATTENTION_VERSIONS[engine] or (kind == "mla" and engine == "vllm"):
                continue  # vLLM 0.14's MLA rows are flat at 130-170 us from 1 to 65K cached tokens: launch-bound,
                # measured eagerly, not as the engine replays its decode steps
            table = pd.read_parquet(io.BytesIO(_git(repo, "show", f"HEAD:{path}")))
            table = table[table["kv_cache_dtype"] == "bfloat16"]
            if "window_size" in table:
                table = table[table["window_size"] == 0]
            gqa = kind == "gqa"
            frames.append(
                pd.DataFrame(
                    {
                        "gpu": gpu,
                        "engine": engine,
                        "version": version,
                        "kind": kind,
                        "heads": table["num_heads"].astype(int),
                        "kv_heads": table["num_key_value_heads"].astype(int) if gqa else 1,
                        "head_dim": table["head_dim"].astype(int) if gqa else 576,
                        "batch": table["batch_size"].astype(int),
                        "context": table["step"].astype(int),
                        "latency_us": (table["latency"] * 1e3).round(3),
                    }
                )
            )
    keys = ["gpu", "engine", "version", "kind", "heads", "kv_heads", "head_dim", "batch", "context"]
    return pd.concat(frames).groupby(keys, as_index=False)["latency_us"].min().sort_values(keys)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    repo = argv[0]
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    OUT.mkdir(parents=True, exist_ok=True)
    custom_allreduce(repo).to_csv(OUT / "custom_allreduce.csv", index=False)  # type: ignore[attr-defined]
    attention = generation_attention(repo)
    attention.to_csv(  # type: ignore[attr-defined]
        OUT / "generation_attention.csv.gz", index=False, compression={"method": "gzip", "mtime": 0}
    )
    (OUT / "COMMIT").write_text(commit + "\n")
    print(f"wrote {OUT} from ai-dynamo/aiconfigurator {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
