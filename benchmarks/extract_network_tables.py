"""Extract the measured communication tables moesim checks its network against into CSV files (issue 28).

Writes `validation/network/`:

- `nccl_intranode.csv` — nccl-tests (all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf) inside
  one NVLink domain, as aiconfigurator's collector ran them (`collector/network/collect_nccl.py`: one process,
  2/4/8 GPUs, half precision, 512 B to 512 MiB): `bytes` is nccl-tests' size (its `-b`), `time_us` its
  out-of-place time. A100 SXM (NCCL 2.27.3), H100 SXM, H200 SXM, B200, B300, GB200 and GB300 (NCCL 2.29.2).
- `deepep_normal.csv`, `deepep_low_latency.csv` — DeepEP's normal and low-latency kernels on 1-8 H100 nodes
  (8 GPUs a node), DeepSeek-V3's shape (hidden 7,168, top-8 of 256 or 288 experts), FP8 dispatch and BF16 combine,
  as aiconfigurator's collector ran DeepEP's own tests (`collector/wideep/sglang/deepep/`; the `sglang/0.5.6.post2`
  folder, which holds the multi-node tables).
- `deepep_h200_normal.csv`, `deepep_h200_low_latency.csv` — the same kernels on one H200 node across 18 MoE shapes
  (hidden 2,048-7,168, top-1 to top-22 of 8-512 experts), the normal kernels at 4-24 SMs (`sglang/0.5.12`): never
  fitted, a check of the H100 fit on another GPU; `deepep_blackwell_*.csv` the same on one B200 and one B300 node
  (what moesim runs there today, the link rates, beside them).

Source: github.com/ai-dynamo/aiconfigurator (Apache-2.0), `aic-core/src/aiconfigurator_core/systems/data/<gpu>/comm/
{nccl,sglang}/<version>/*.parquet`, at the commit written to `validation/network/AICONFIGURATOR_COMMIT`. It needs
pandas and pyarrow (not moesim's dependencies). It never opens the repository's `silicon_sample.csv`.

    python benchmarks/extract_network_tables.py PATH_TO_AICONFIGURATOR_GIT_DIR
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from extract_aiconfigurator_tables import DATA, _git  # the sibling script: its git reader and data folder

OUT = Path(__file__).resolve().parent.parent / "validation" / "network"
NCCL_FOLDERS = {
    "a100_sxm": "2.27.3",
    "h100_sxm": "2.29.2",
    "h200_sxm": "2.29.2",
    "b200_sxm": "2.29.2",
    "b300_sxm": "2.29.2",
    "gb200": "2.29.2",
    "gb300": "2.29.2",
}
"""The NCCL folder read for each GPU: the newest NCCL each GPU was measured with."""
DEEPEP_FOLDER = ("h100_sxm", "sglang/0.5.6.post2")
"""The one folder with multi-node DeepEP tables (1, 2, 4 and 8 nodes of 8 H100)."""
GPUS_PER_NODE = 8


def _parquet(repo: str, path: str) -> "object":
    import pandas as pd

    return pd.read_parquet(io.BytesIO(_git(repo, "show", f"HEAD:{DATA}/{path}")))


def nccl_intranode(repo: str) -> "object":
    """nccl-tests inside a node, half precision: nccl-tests' size in bytes (aiconfigurator stores elements)."""
    import pandas as pd

    frames = []
    for gpu, version in NCCL_FOLDERS.items():
        table = _parquet(repo, f"{gpu}/comm/nccl/{version}/nccl_perf.parquet")
        table = table[table["nccl_dtype"] == "half"]
        frames.append(
            pd.DataFrame(
                {
                    "table": "nccl/" + gpu + "/" + table["op_name"],
                    "gpu": gpu,
                    "nccl": table["version"],
                    "collective": table["op_name"],
                    "ranks": table["num_gpus"].astype(int),
                    "bytes": table["message_size"].astype(int) * 2,
                    "time_us": (table["latency"] * 1e3).round(3),
                }
            )
        )
    return pd.concat(frames).sort_values(["gpu", "collective", "ranks", "bytes"])


def _deepep_shape(table: "object", name: "object") -> dict:
    """The columns every DeepEP row has: its table, GPU, ranks (8 a node) and the routed shape."""
    return {
        "table": name,
        "gpu": DEEPEP_FOLDER[0],
        "ranks": table["node_num"].astype(int) * GPUS_PER_NODE,  # type: ignore[index]
        "nodes": table["node_num"].astype(int),  # type: ignore[index]
        "tokens": table["num_token"].astype(int),  # type: ignore[index]
        "hidden": table["hidden_size"].astype(int),  # type: ignore[index]
        "topk": table["num_topk"].astype(int),  # type: ignore[index]
        "experts": table["num_experts"].astype(int),  # type: ignore[index]
    }


def deepep_normal(repo: str) -> "object":
    """DeepEP's normal kernels, its autotuned best time for each SM count (transmit and notify kernels apart)."""
    import pandas as pd

    gpu, folder = DEEPEP_FOLDER
    table = _parquet(repo, f"{gpu}/comm/{folder}/wideep_deepep_normal_perf.parquet")
    table = table[table["device"] == "NVIDIA H100"]
    return pd.DataFrame(
        {
            **_deepep_shape(table, f"deepep_normal/{gpu}"),
            "sms": table["dispatch_sms"].astype(int),
            "dispatch_us": table["dispatch_transmit_us"],
            "dispatch_notify_us": table["dispatch_notify_us"],
            "combine_us": table["combine_transmit_us"],
            "combine_notify_us": table["combine_notify_us"],
        }
    ).sort_values(["ranks", "sms", "tokens"])


def deepep_low_latency(repo: str) -> "object":
    """DeepEP's low-latency kernels (NVLink allowed inside a node, as aiconfigurator's collector runs them)."""
    import pandas as pd

    gpu, folder = DEEPEP_FOLDER
    table = _parquet(repo, f"{gpu}/comm/{folder}/wideep_deepep_ll_perf.parquet")
    return pd.DataFrame(
        {
            **_deepep_shape(table, f"deepep_low_latency/{gpu}/" + table["num_experts"].astype(str) + "experts"),
            "dispatch_us": table["dispatch_avg_t_us"],
            "combine_us": table["combine_avg_t_us"],
        }
    ).sort_values(["experts", "ranks", "tokens"])


H200_FOLDER = ("h200_sxm", "sglang/0.5.12")
"""DeepEP's kernels on one H200 node across 18 MoE shapes (never fitted: a check of the H100 fit on another GPU)."""


def _h200_shape(table: "object", kernel: str, gpu: str) -> dict:
    shape = (
        table["hidden_size"].astype(str) + "x" + table["num_topk"].astype(str) + "x" + table["num_experts"].astype(str)
    )  # type: ignore[index]
    return {**_deepep_shape(table, f"{kernel}/{gpu}/" + shape), "gpu": gpu}


def deepep_h200(repo: str, gpu: str = H200_FOLDER[0]) -> tuple["object", "object"]:
    """DeepEP's normal (4-24 SMs) and low-latency kernels on one node of `gpu`, every shape aiconfigurator measured."""
    import pandas as pd

    folder = H200_FOLDER[1]
    normal = _parquet(repo, f"{gpu}/comm/{folder}/wideep_deepep_normal_perf.parquet")
    low = _parquet(repo, f"{gpu}/comm/{folder}/wideep_deepep_ll_perf.parquet")
    normal = pd.DataFrame(
        {
            **_h200_shape(normal, "deepep_normal", gpu),
            "sms": normal["dispatch_sms"].astype(int),
            "dispatch_us": normal["dispatch_transmit_us"],
            "dispatch_notify_us": normal["dispatch_notify_us"],
            "combine_us": normal["combine_transmit_us"],
            "combine_notify_us": normal["combine_notify_us"],
        }
    ).sort_values(["table", "sms", "tokens"])
    low = pd.DataFrame(
        {
            **_h200_shape(low, "deepep_low_latency", gpu),
            "dispatch_us": low["dispatch_avg_t_us"],
            "combine_us": low["combine_avg_t_us"],
        }
    ).sort_values(["table", "tokens"])
    return normal, low


BLACKWELL_GPUS = ("b200_sxm", "b300_sxm")
"""Blackwell nodes of 8 GPUs with single-node DeepEP tables (GB200 and GB300: a tray's GPU count unstated there)."""


def main(argv: list[str]) -> int:
    import pandas as pd

    if len(argv) != 1:
        print(__doc__)
        return 2
    repo = argv[0]
    OUT.mkdir(parents=True, exist_ok=True)
    nccl_intranode(repo).to_csv(OUT / "nccl_intranode.csv", index=False)  # type: ignore[attr-defined]
    deepep_normal(repo).to_csv(OUT / "deepep_normal.csv", index=False)  # type: ignore[attr-defined]
    deepep_low_latency(repo).to_csv(OUT / "deepep_low_latency.csv", index=False)  # type: ignore[attr-defined]
    h200_normal, h200_low = deepep_h200(repo)
    h200_normal.to_csv(OUT / "deepep_h200_normal.csv", index=False)  # type: ignore[attr-defined]
    h200_low.to_csv(OUT / "deepep_h200_low_latency.csv", index=False)  # type: ignore[attr-defined]
    blackwell = [deepep_h200(repo, gpu) for gpu in BLACKWELL_GPUS]
    pd.concat([normal for normal, _ in blackwell]).to_csv(OUT / "deepep_blackwell_normal.csv", index=False)
    pd.concat([low for _, low in blackwell]).to_csv(OUT / "deepep_blackwell_low_latency.csv", index=False)
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    (OUT / "AICONFIGURATOR_COMMIT").write_text(commit + "\n")
    print(f"wrote {OUT} from ai-dynamo/aiconfigurator {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
