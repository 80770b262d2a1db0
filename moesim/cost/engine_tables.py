"""Kernels as the serving engines run them, measured: aiconfigurator's per-kernel database, by GPU, engine and
engine version (`engines/aiconfigurator/`, extracted by `benchmarks/extract_aiconfigurator_tables.py`).

TensorRT-LLM, SGLang and vLLM do not all-reduce a TP group's activations with NCCL's ring: each has its own
kernels for small messages (one-shot and two-shot all-reduce over NVLink peer memory) and falls back to NCCL for
large ones, and each replays its decode iterations as CUDA graphs, where a kernel's launch costs almost nothing:
on 8 H200 an SGLang all-reduce of 4,096 bf16 elements takes 4.9 us replayed in a graph and 22 us launched eagerly
(aiconfigurator's table). moesim reads the engine's measured all-reduce where the table has the GPU and the group
size, in graph mode for iterations that only decode (the engines capture those) and eager for iterations that
prefill; the table's version is the newest measured one not newer than the engine's (else the oldest measured),
and `table_version` says which.

Source: github.com/ai-dynamo/aiconfigurator (Apache-2.0), commit in `engines/aiconfigurator/COMMIT`, files
`aic-core/src/aiconfigurator_core/systems/data/<gpu>/comm/<engine>/<version>/custom_allreduce_perf.parquet`.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

TABLES = Path(__file__).resolve().parent / "engines" / "aiconfigurator"
ENGINES = ("trtllm", "sglang", "vllm")
ENGINE_NAMES = {"trtllm": "TensorRT-LLM", "sglang": "SGLang", "vllm": "vLLM"}
GPU_KEYS = {"H100-SXM": "h100_sxm", "H200": "h200_sxm"}
"""moesim's GPU presets the tables measure, by the tables' names for them."""
ALLREDUCE_ELEMENT_BYTES = 2
"""The tables all-reduce bf16 activations."""


def source_commit() -> str:
    return (TABLES / "COMMIT").read_text().strip()


def version_key(version: str) -> tuple[int, ...]:
    """A version's numbers in order (`1.2.0rc5` -> (1, 2, 0, 5)); a version without any sorts first."""
    return tuple(int(number) for number in re.findall(r"\d+", version))


@lru_cache(maxsize=None)
def _allreduce_rows() -> dict[tuple[str, str, str, str, int], tuple[np.ndarray, np.ndarray]]:
    """(gpu, engine, version, mode, gpus) -> (elements, seconds), sorted by elements."""
    grouped: dict[tuple[str, str, str, str, int], list[tuple[int, float]]] = {}
    with (TABLES / "custom_allreduce.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["gpu"], row["engine"], row["version"], row["mode"], int(row["gpus"]))
            grouped.setdefault(key, []).append((int(row["elements"]), float(row["latency_us"]) * 1e-6))
    tables = {}
    for key, points in grouped.items():
        points.sort()
        tables[key] = (np.array([p[0] for p in points], float), np.array([p[1] for p in points]))
    return tables


def table_version(gpu: str, engine: str, version: Optional[str]) -> Optional[str]:
    """The measured version of `engine` on `gpu` (moesim's GPU name) moesim reads for the engine's `version`: the
    newest measured one not newer than it, else the oldest measured (also for a version not stated); None where
    the GPU or the engine has no table."""
    key = GPU_KEYS.get(gpu)
    measured = sorted({v for g, e, v, _, _ in _allreduce_rows() if g == key and e == engine}, key=version_key)
    if not measured:
        return None
    wanted = version_key(version) if version and version[0].isdigit() else ()  # "gpt-oss-dev": not a version
    older = [v for v in measured if version_key(v) <= wanted] if wanted else []
    return older[-1] if older else measured[0]


def allreduce_seconds(
    gpu: str, engine: str, version: Optional[str], gpus: int, size_bytes: float, graph: bool
) -> Optional[float]:
    """Seconds the engine's all-reduce of `size_bytes` (bf16) takes over `gpus` GPUs of one node, in a CUDA graph
    (`graph`) or launched eagerly: log-log interpolation between the measured sizes, the smallest's time below
    them, the largest's bandwidth above. None where the table lacks the GPU, the engine or the group size."""
    measured = table_version(gpu, engine, version)
    if measured is None or gpus <= 1:
        return None if measured is None else 0.0
    tables = _allreduce_rows()
    key = GPU_KEYS[gpu]
    modes = ("graph", "any") if graph else ("eager", "any")
    found = next((tables[k] for mode in modes if (k := (key, engine, measured, mode, gpus)) in tables), None)
    if found is None:
        return None
    elements, seconds = found
    size = max(1.0, size_bytes / ALLREDUCE_ELEMENT_BYTES)
    if size <= elements[0]:
        return float(seconds[0])
    if size >= elements[-1]:
        return float(seconds[-1] * size / elements[-1])
    return float(np.exp(np.interp(np.log(size), np.log(elements), np.log(seconds))))
