"""Trace files: recorded router scores, so routing can be studied on real scores.

Format (numpy `.npz`, version 1):

| array          | dtype                          | shape                     | meaning                              |
| -------------- | ------------------------------ | ------------------------- | ------------------------------------ |
| format_version | int (scalar)                   | ()                        | 1                                    |
| logits         | float16, float32 or float64 (1)| [layers, tokens, experts] | router logits of each MoE layer      |
| token_ids      | any integer type               | [tokens]                  | token id of each position            |
| source_rank    | any integer type, optional     | [tokens]                  | rank each token starts on (default 0)|
| layer_index    | any integer type, optional     | [layers]                  | model layer of each row (default 0..)|

(1) bfloat16 logits are stored as float32. `layer_index` defaults to 0..layers-1.

The executor's `train-small` writes these; `load_trace` checks every shape and dtype and
says what is wrong in one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from moesim.errors import MoesimError
from moesim.workload.scores import RouterScores

FORMAT_VERSION = 1


class TraceError(MoesimError):
    """A trace file that cannot be read as router scores."""


def save_trace(path: str | Path, layers: Sequence[RouterScores]) -> Path:
    """Write the scores of several layers (same tokens) as a version-1 trace file."""
    if not layers:
        raise TraceError("save_trace needs at least one layer of scores")
    first = layers[0]
    for scores in layers[1:]:
        if scores.logits.shape != first.logits.shape or not torch.equal(scores.token_ids, first.token_ids):
            raise TraceError("every layer in a trace must have the same tokens and the same number of experts")
    path = Path(path)
    np.savez_compressed(
        path,
        format_version=np.array(FORMAT_VERSION),
        logits=np.stack([scores.logits.float().numpy() for scores in layers]),
        token_ids=first.token_ids.numpy().astype(np.int64),
        source_rank=first.source_rank.numpy().astype(np.int64),
        layer_index=np.array([scores.layer for scores in layers], dtype=np.int64),
    )
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def trace_digest(scores: RouterScores) -> str:
    """SHA-256 of the logits (float32), token ids and source ranks (int64), as a trace file stores them."""
    sha = hashlib.sha256()
    for array in (
        scores.logits.float().numpy().astype(np.float32),
        scores.token_ids.numpy().astype(np.int64),
        scores.source_rank.numpy().astype(np.int64),
    ):
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def load_trace(path: str | Path) -> list[RouterScores]:
    """Read a trace file into one `RouterScores` per layer."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise TraceError(f"{path}: not a readable .npz trace ({' '.join(str(error).split())})") from None
    with archive:
        names = set(archive.files)
        missing = {"format_version", "logits", "token_ids"} - names
        if missing:
            raise TraceError(
                f"{path}: missing array(s) {', '.join(sorted(missing))}; see moesim.workload.trace for the format"
            )
        version = archive["format_version"]
        if version.shape != () or int(version) != FORMAT_VERSION:
            raise TraceError(f"{path}: format_version {version.tolist()} is not supported (expected {FORMAT_VERSION})")
        logits = archive["logits"]
        if logits.ndim != 3 or not np.issubdtype(logits.dtype, np.floating):
            raise TraceError(
                f"{path}: logits must be floating point [layers, tokens, experts], got {logits.dtype} {logits.shape}"
            )
        if not np.isfinite(logits).all():
            raise TraceError(f"{path}: logits contain NaN or infinity")
        layers, tokens, _ = logits.shape
        token_ids = _integer_vector(path, archive, "token_ids", tokens)
        source_rank = (
            _integer_vector(path, archive, "source_rank", tokens)
            if "source_rank" in names
            else np.zeros(tokens, np.int64)
        )
        layer_index = (
            _integer_vector(path, archive, "layer_index", layers) if "layer_index" in names else np.arange(layers)
        )
    return [
        RouterScores(
            logits=torch.from_numpy(logits[index].astype(np.float32)),
            token_ids=torch.from_numpy(token_ids),
            source_rank=torch.from_numpy(source_rank),
            layer=int(layer_index[index]),
        )
        for index in range(layers)
    ]


def _integer_vector(path: Path, archive: np.lib.npyio.NpzFile, name: str, length: int) -> np.ndarray:
    values = archive[name]
    if values.shape != (length,) or not np.issubdtype(values.dtype, np.integer):
        raise TraceError(
            f"{path}: {name} must be an integer array of shape ({length},), got {values.dtype} {values.shape}"
        )
    return values.astype(np.int64)
