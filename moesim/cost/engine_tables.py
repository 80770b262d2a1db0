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

The engines' decode-attention kernels (FlashInfer, FlashAttention, TensorRT-LLM's XQA and MLA kernels) are read
the same way (`decode_attention_seconds`), by the heads and KV heads a GPU holds, the batch and the cached tokens.

Source: github.com/ai-dynamo/aiconfigurator (Apache-2.0), commit in `engines/aiconfigurator/COMMIT`, files
`aic-core/src/aiconfigurator_core/systems/data/<gpu>/{comm,attention,mla}/<engine>/<version>/*.parquet`.
"""

from __future__ import annotations

import csv
import gzip
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from moesim.cluster.collective_tables import GPU_TABLES

TABLES = Path(__file__).resolve().parent / "engines" / "aiconfigurator"
ENGINES = ("trtllm", "sglang", "vllm")
ENGINE_NAMES = {"trtllm": "TensorRT-LLM", "sglang": "SGLang", "vllm": "vLLM"}
GPU_KEYS = {name: GPU_TABLES[name] for name in ("H100-SXM", "H200")}
"""moesim's GPU presets the engines' tables measure, by aiconfigurator's names for them."""
ALLREDUCE_ELEMENT_BYTES = 2
"""The tables all-reduce bf16 activations."""


@lru_cache(maxsize=None)
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


@lru_cache(maxsize=None)
def table_version(gpu: str, engine: str, version: Optional[str]) -> Optional[str]:
    """The measured version of `engine`'s all-reduce on `gpu` (moesim's GPU name) moesim reads for the engine's
    `version` (`nearest_version`); None where the GPU or the engine has no table."""
    key = GPU_KEYS.get(gpu)
    return nearest_version({v for g, e, v, _, _ in _allreduce_rows() if g == key and e == engine}, version)


def nearest_version(versions: set[str], version: Optional[str]) -> Optional[str]:
    """Of the measured `versions`, the newest not newer than `version`, else the oldest (also for a version not
    stated, or not a version number); None where there are none."""
    measured = sorted(versions, key=version_key)
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


AttentionKey = tuple[str, str, str, str, int, int, int]
"""(gpu, engine, version, kind, heads, KV heads, head size) of a decode-attention table."""


@lru_cache(maxsize=None)
def _attention_tables() -> dict[AttentionKey, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each decode-attention table: its batches, its cached-token counts and seconds by (batch, context), NaN
    where not measured (the large corners aiconfigurator's collector left out)."""
    points: dict[AttentionKey, dict[tuple[int, int], float]] = {}
    with gzip.open(TABLES / "generation_attention.csv.gz", "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            key = (
                row["gpu"],
                row["engine"],
                row["version"],
                row["kind"],
                int(row["heads"]),
                int(row["kv_heads"]),
                int(row["head_dim"]),
            )
            points.setdefault(key, {})[(int(row["batch"]), int(row["context"]))] = float(row["latency_us"]) * 1e-6
    tables = {}
    for key, measured in points.items():
        batches = np.array(sorted({b for b, _ in measured}), float)
        contexts = np.array(sorted({c for _, c in measured}), float)
        grid = np.full((batches.size, contexts.size), np.nan)
        for (batch, context), seconds in measured.items():
            grid[np.searchsorted(batches, batch), np.searchsorted(contexts, context)] = seconds
        tables[key] = (batches, contexts, grid)
    return tables


def _along_context(contexts: np.ndarray, row: np.ndarray, context: float) -> float:
    """One batch's seconds at `context` cached tokens: log-log between measured ones, the fewest's below them,
    linear in the cached tokens beyond the most (reading the KV cache bounds the kernel there)."""
    measured = ~np.isnan(row)
    known, seconds = contexts[measured], row[measured]
    if context <= known[0]:
        return float(seconds[0])
    if context >= known[-1]:
        return float(seconds[-1] * context / known[-1])
    return float(np.exp(np.interp(np.log(context), np.log(known), np.log(seconds))))


@lru_cache(maxsize=None)
def _attention_version(gpu: str, engine: str, version: Optional[str], kind: str) -> Optional[str]:
    """The measured version of `engine`'s `kind` decode attention on `gpu` read for `version` (`nearest_version`)."""
    key = GPU_KEYS.get(gpu)
    return nearest_version({k[2] for k in _attention_tables() if k[:2] == (key, engine) and k[3] == kind}, version)


def decode_attention_seconds(
    gpu: str,
    engine: str,
    version: Optional[str],
    kind: str,
    heads: int,
    kv_heads: int,
    head_dim: int,
    batch: float,
    context: float,
) -> Optional[float]:
    """Seconds of the engine's decode-attention kernel on one GPU for `batch` sequences reading `context` cached
    tokens each (`kind` "gqa" with `heads` and `kv_heads` a GPU of `head_dim`, or "mla" with `heads` a GPU), as
    measured (log-log between measured batches and contexts; beyond the largest batch measured, linear in the
    batch); None where the engine's tables lack the GPU or the head layout."""
    key = GPU_KEYS.get(gpu)
    measured = _attention_version(gpu, engine, version, kind)
    found = _attention_tables().get((key, engine, measured, kind, heads, kv_heads, head_dim)) if measured else None
    if found is None or batch <= 0:
        return None
    batches, contexts, grid = found  # every batch row has a measured context
    if batch >= batches[-1]:
        return _along_context(contexts, grid[-1], context) * batch / batches[-1]
    if batch <= batches[0]:
        return _along_context(contexts, grid[0], context)
    upper = int(np.searchsorted(batches, batch))
    lower = upper - 1
    low, high = (_along_context(contexts, grid[i], context) for i in (lower, upper))
    weight = (np.log(batch) - np.log(batches[lower])) / (np.log(batches[upper]) - np.log(batches[lower]))
    return float(np.exp((1 - weight) * np.log(low) + weight * np.log(high)))


def engine_words(gpu: str, engine: Optional[str], version: Optional[str]) -> str:
    """What a serving run models of its engine, for the notes: which measured tables it reads and what stays
    moesim's own."""
    if not engine:
        return (
            "engine: none named (serving.engine): moesim's own kernel models throughout; name trtllm, sglang or "
            "vllm to read that engine's measured all-reduce and decode attention"
        )
    name = f"{ENGINE_NAMES[engine]} {version or '(version not stated)'}"
    measured = table_version(gpu, engine, version)
    if measured is None:
        return f"engine: {name}: no measured tables for the {gpu}; moesim's own kernel models throughout"
    return (
        f"engine: {name}: its TP all-reduce and decode attention as aiconfigurator measured {ENGINE_NAMES[engine]} "
        f"{measured} on the {gpu} (commit {source_commit()[:9]}; CUDA graphs in decode-only iterations); "
        "scheduling, MoE and other kernels: moesim's own models"
    )
