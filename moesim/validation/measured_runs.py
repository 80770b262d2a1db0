"""The measured serving runs of the given file (`../shared/serving-measurements/`), as moesim scenarios.

Each row is one deployment on one engine measured at one concurrency (a closed loop of fixed-length requests);
`describe` turns a row into the scenario moesim serves for it, or says why moesim cannot describe it yet, so that
the set of runs served is decided by the data and every skip is counted with its reason. The split of
`validation/held_out/serving_runs.json` decides which rows are for development and which judge the model: callers
name the part they read, and the quoting part is read only to quote the shipped model's errors.

How a row's fields become a scenario (aiconfigurator's column meanings, its README):
- `tp_size` x `attention_dp_size` GPUs (x `pp_size`), 8 a node; attention tensor parallel `tp_size`; experts
  split `moe_tp_size` (expert tensor parallel) x `moe_ep_size` (expert parallel).
- `gemm_quant_mode` / `moe_quant_mode` `fp8` or `fp8_block`: FP8 weights and GEMMs (moesim prices both as its
  FP8 kernel tables measured them: the per-tensor and 128x128-block scalings are not told apart); empty: BF16.
  A 4-bit `moe_quant_mode` (`nvfp4`, `mxfp4`, `int4_wo`) on these Hopper GPUs: the experts' weights read at their
  size and computed in bf16 (`workload.precision.expert_weights`), the other GEMMs in bf16.
- Disaggregated runs: the decode pool is the cluster (its engines x its layout), the prefill pool a pool of nodes of
  the same size (`serving.prefill_pool`); a pool's engine count is 1 where the row does not state it.
- The closed loop at `silicon_concurrency` requests of `isl` prompt and `osl` output tokens, measured as a benchmark
  client measures it (`serving.measure: benchmark`: `BENCHMARK_ROUNDS` x the concurrency requests from a
  simultaneous start, every one counted); the figures compared are the mean time to first token and the mean time
  per output token, as the client reports them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from moesim.validation.held_out import REPO, SERVING_RUNS, serving_run_split

GPUS = {"h100_sxm": "H100-SXM", "h200_sxm": "H200"}
"""The given file's systems moesim has measured kernel tables for."""

GPUS_PER_NODE = 8
MODELS: dict[str, Union[str, Path]] = {
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",  # R1's config.json is V3's architecture
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "openai/gpt-oss-120b": REPO / "models" / "hf" / "gpt-oss-120b.json",
    "MiniMaxAI/MiniMax-M2.5": REPO / "models" / "hf" / "minimax-m2.5.json",
    "moonshotai/Kimi-K2.5": REPO / "models" / "hf" / "kimi-k2.5.json",
}
"""Model paths of the given file moesim describes: a preset or a Hugging Face config under `models/hf/`."""

MOE_MODELS = (
    "DeepSeek",
    "Qwen3-235B",
    "Qwen3.5",
    "gpt-oss",
    "MiniMax",
    "Kimi",
    "GLM",
)
"""Substrings of the given file's MoE model paths (the rest are dense Llama and Qwen models)."""

FP8_MODES = ("fp8", "fp8_block")
WEIGHT_ONLY = {"nvfp4": "nvfp4", "mxfp4": "mxfp4", "int4_wo": "int4"}
"""The given file's 4-bit expert formats, as moesim's weight-only formats (Hopper has no FP4 tensor cores: the
engines read the 4-bit weights and compute in bf16; FP4 compute on Blackwell is the hardware issue's)."""
BENCHMARK_ROUNDS = 10
"""Requests a run's client sends, in rounds of its concurrency, all counted from a simultaneous start (assumed:
aiconfigurator's deployment guide benchmarks with `concurrency * 10` requests; the given file does not say)."""
BANDS = ((1, 8), (9, 64), (65, 512))
"""Concurrency bands (requests in flight) the errors are quoted by."""


@dataclass(frozen=True)
class MeasuredRun:
    """One row of the given file: a deployment, its load and what was measured."""

    id: str
    engine: str
    engine_version: str
    model_path: str
    system: str
    mode: str
    isl: int
    osl: int
    gemm_quant: str
    moe_quant: str
    tp: int
    attention_dp: int
    moe_tp: int
    moe_ep: int
    pp: int
    concurrency: int
    ttft_ms: float
    tpot_ms: float
    prefill_tp: int = 1  # disaggregated runs: the prefill pool's layout and both pools' engines ("workers")
    prefill_attention_dp: int = 1
    prefill_moe_tp: int = 1
    prefill_moe_ep: int = 1
    prefill_workers: int = 1
    decode_workers: int = 1

    @property
    def moe(self) -> bool:
        return any(name in self.model_path for name in MOE_MODELS)

    @property
    def gpus(self) -> int:
        """GPUs of one engine (the decode pool's when disaggregated)."""
        return self.tp * self.attention_dp * self.pp

    @property
    def prefill_gpus(self) -> int:
        return self.prefill_tp * self.prefill_attention_dp

    @property
    def group(self) -> str:
        """How the errors are grouped: "single-node" (one engine on one node: the issue's bar), "multi-node" or
        "disaggregated" (printed, no bar yet)."""
        if self.mode == "disagg":
            return "disaggregated"
        return "single-node" if self.gpus <= GPUS_PER_NODE else "multi-node"

    @property
    def model_name(self) -> str:
        return self.model_path.split("/")[-1]

    @property
    def band(self) -> str:
        for low, high in BANDS:
            if low <= self.concurrency <= high:
                return f"{low}-{high}"
        return f">{BANDS[-1][1]}"


def _int(value: str, default: int = 1) -> int:
    return int(float(value)) if value.strip() else default


def _concurrency(row: dict[str, str]) -> int:
    """Requests kept in flight: the container's `silicon_concurrency`, else batch x attention DP."""
    found = re.search(r"silicon_concurrency=(\d+)", row["silicon_data_source"])
    if found:
        return int(found.group(1))
    return _int(row["batch_size"]) * _int(row["attention_dp_size"])


def read_runs(part: str, path: Path = SERVING_RUNS) -> list[MeasuredRun]:
    """The given file's rows of `part` ("development" or "held_out", the committed split), agg and disagg; a
    disaggregated row's fields are its decode pool's (moesim does not describe those runs yet)."""
    if part not in ("development", "held_out"):
        raise ValueError(f"part: {part!r} is neither 'development' nor 'held_out'")
    keep = set(serving_run_split(path)[part])
    runs = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["id"] not in keep:
                continue
            pool = "decode_" if row["mode"] == "disagg" else ""
            runs.append(
                MeasuredRun(
                    id=row["id"],
                    engine=row["backend"],
                    engine_version=row["backend_version"],
                    model_path=row["model_path"],
                    system=row["system"],
                    mode=row["mode"],
                    isl=_int(row["isl"]),
                    osl=_int(row["osl"]),
                    gemm_quant=row["gemm_quant_mode"],
                    moe_quant=row["moe_quant_mode"],
                    tp=_int(row[pool + "tp_size"]),
                    attention_dp=_int(row[pool + "attention_dp_size"]),
                    moe_tp=_int(row[pool + "moe_tp_size"]),
                    moe_ep=_int(row[pool + "moe_ep_size"]),
                    pp=_int(row[pool + "pp_size"]),
                    concurrency=_concurrency(row),
                    ttft_ms=float(row["silicon_ttft_ms"]),
                    tpot_ms=float(row["silicon_tpot_ms"]),
                    **(_prefill_pool(row) if pool else {}),
                )
            )
    return runs


def _prefill_pool(row: dict[str, str]) -> dict[str, int]:
    """A disaggregated row's prefill pool and both pools' engine counts (one engine a pool where not stated)."""
    return dict(
        prefill_tp=_int(row["prefill_tp_size"]),
        prefill_attention_dp=_int(row["prefill_attention_dp_size"]),
        prefill_moe_tp=_int(row["prefill_moe_tp_size"]),
        prefill_moe_ep=_int(row["prefill_moe_ep_size"]),
        prefill_workers=_int(row["prefill_num_workers"]),
        decode_workers=_int(row["decode_num_workers"]),
    )


def skip_reason(run: MeasuredRun) -> Optional[str]:
    """Why moesim cannot describe `run` yet (None: it can)."""
    if run.system not in GPUS:
        return f"{run.system}: no measured kernel tables (the hardware issue, 28)"
    if run.model_path not in MODELS:
        return f"{run.model_name}: no preset or config yet"
    if run.mode == "disagg":
        per_node = min(run.gpus, GPUS_PER_NODE)
        if (run.prefill_gpus * run.prefill_workers) % per_node or run.gpus % per_node:
            return "disaggregated: pools that do not fill whole nodes of the decode engine's size"
        if run.prefill_moe_tp * run.prefill_moe_ep != run.prefill_gpus:
            return "moe_tp x moe_ep differs from tp x attention_dp (inconsistent row)"
    if run.moe_quant and run.moe_quant not in FP8_MODES + tuple(WEIGHT_ONLY):
        return f"{run.moe_quant} experts: not a format moesim models"
    if run.moe_tp * run.moe_ep != run.tp * run.attention_dp:
        return "moe_tp x moe_ep differs from tp x attention_dp (inconsistent row)"
    if run.pp > 1:
        return "pipeline stages: not described yet"
    return None


def scenario_document(run: MeasuredRun, requests: Optional[int] = None) -> dict[str, Any]:
    """The scenario moesim serves for `run` (`skip_reason(run)` must be None): its deployment closed-loop at its
    concurrency, `requests` requests in all (default: enough for the loop to hold its concurrency for a while)."""
    model = MODELS[run.model_path]
    fp8 = run.gemm_quant in FP8_MODES
    precision: dict[str, Any] = {"weights": "fp8", "gemm": "fp8"} if fp8 else {}
    if run.moe_quant in WEIGHT_ONLY:  # on Hopper a weight-only format: read at 4 bits, computed in bf16
        precision["expert_weights"] = WEIGHT_ONLY[run.moe_quant]
    per_node = min(run.gpus, GPUS_PER_NODE)
    gpus = run.gpus * run.decode_workers
    serving: dict[str, Any] = {}
    if run.mode == "disagg":  # the cluster is the decode pool; the prefill pool has nodes of the same size
        serving["prefill_pool"] = {
            "num_nodes": run.prefill_gpus * run.prefill_workers // per_node,
            "tp_size": run.prefill_tp,
            "ep_size": run.prefill_moe_ep,
            "expert_tp_size": run.prefill_moe_tp,
        }
    return {
        "name": run.id,
        "description": f"{run.model_name} on {gpus} {run.system}, {run.engine} {run.engine_version}".strip(),
        "seed": 0,
        "model": str(model),
        "cluster": {"num_nodes": gpus // per_node, "gpus_per_node": per_node, "gpu": GPUS[run.system]},
        "parallelism": {"tp_size": run.tp, "ep_size": run.moe_ep, "expert_tp_size": run.moe_tp},
        "workload": {"mode": "inference", "seq_len": run.isl, "precision": precision},
        "routing": {"capacity_factor": None},
        "simulation": {"moe_kernels": "fused", "network_mode": "fast"},
        "serving": {
            "input_tokens": run.isl,
            "output_tokens": run.osl,
            "arrival": "closed",
            "concurrency": run.concurrency,
            "num_requests": requests or BENCHMARK_ROUNDS * run.concurrency,
            "measure": "benchmark",
            "engine": run.engine,
            "engine_version": run.engine_version or None,
            **serving,
        },
    }
