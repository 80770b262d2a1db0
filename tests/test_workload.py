"""Synthetic scores are reproducible and have the asked-for properties; traces round-trip and fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moesim.routing import make_router
from moesim.routing.metrics import load_imbalance
from moesim.workload import SyntheticScores, TraceError, load_trace, save_trace


def test_same_seed_same_scores_bit_for_bit() -> None:
    make = lambda seed: SyntheticScores(num_tokens=256, num_experts=16, num_layers=2, seed=seed)  # noqa: E731
    first, again, other = make(0).layer(3, 1), make(0).layer(3, 1), make(1).layer(3, 1)
    assert torch.equal(first.logits, again.logits) and torch.equal(first.token_ids, again.token_ids)
    assert not torch.equal(first.logits, other.logits)


def test_skew_makes_routing_imbalanced() -> None:
    def imbalance(skew: float) -> float:
        scores = SyntheticScores(num_tokens=8192, num_experts=32, expert_popularity_skew=skew).layer(0, 0)
        return load_imbalance(make_router("top_k", num_experts=32, top_k=2).route(scores.logits))

    assert imbalance(0.0) < 1.15 < 2.0 < imbalance(1.0)


def test_layer_correlation() -> None:
    def correlation(rho: float) -> float:
        generator = SyntheticScores(num_tokens=4096, num_experts=8, num_layers=2, layer_correlation=rho)
        a, b = generator.layer(0, 0).logits, generator.layer(0, 1).logits
        a, b = a - a.mean(0), b - b.mean(0)
        return float((a * b).sum() / (a.norm() * b.norm()))

    assert correlation(0.0) == pytest.approx(0.0, abs=0.03)
    assert correlation(0.8) == pytest.approx(0.8, abs=0.03)


def test_drift_and_token_ids() -> None:
    generator = SyntheticScores(num_tokens=10000, num_experts=8, step_drift=0.5, token_id_skew=1.2, vocab_size=1000)
    assert not np.allclose(generator.popularity(0, 0), generator.popularity(5, 0))
    scores = SyntheticScores(num_tokens=10, num_experts=8)
    assert np.allclose(scores.popularity(5, 0), scores.popularity(0, 0))
    ids = generator.token_ids(0)
    counts = torch.bincount(ids, minlength=1000).sort(descending=True).values
    assert counts[0] > 10 * counts[100]  # Zipf-like head
    ranks = generator.source_ranks()
    assert ranks.min() == 0 and ranks.max() == 0


def test_trace_round_trip(tmp_path: Path) -> None:
    generator = SyntheticScores(num_tokens=64, num_experts=8, num_layers=3, num_ranks=4)
    layers = list(generator.step(0))
    path = save_trace(tmp_path / "trace.npz", layers)
    loaded = load_trace(path)
    assert len(loaded) == 3
    for original, back in zip(layers, loaded):
        assert torch.equal(original.logits, back.logits)
        assert torch.equal(original.token_ids, back.token_ids)
        assert torch.equal(original.source_rank, back.source_rank)
        assert original.layer == back.layer


def test_bad_traces_fail_with_one_line(tmp_path: Path) -> None:
    def write(**arrays: object) -> Path:
        path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.npz"
        np.savez(path, **arrays)
        return path

    cases = [
        (write(logits=np.zeros((1, 4, 8), np.float32), token_ids=np.zeros(4, np.int64)), "missing array"),
        (
            write(format_version=np.array(2), logits=np.zeros((1, 4, 8), np.float32), token_ids=np.zeros(4, np.int64)),
            "not supported",
        ),
        (
            write(format_version=np.array(1), logits=np.zeros((4, 8), np.float32), token_ids=np.zeros(4, np.int64)),
            "[layers, tokens, experts]",
        ),
        (
            write(format_version=np.array(1), logits=np.zeros((1, 4, 8), np.int32), token_ids=np.zeros(4, np.int64)),
            "floating point",
        ),
        (
            write(format_version=np.array(1), logits=np.zeros((1, 4, 8), np.float32), token_ids=np.zeros(5, np.int64)),
            "token_ids",
        ),
        (
            write(
                format_version=np.array(1), logits=np.zeros((1, 4, 8), np.float32), token_ids=np.zeros(4, np.float32)
            ),
            "integer",
        ),
        (
            write(
                format_version=np.array(1),
                logits=np.full((1, 4, 8), np.nan, np.float32),
                token_ids=np.zeros(4, np.int64),
            ),
            "NaN",
        ),
    ]
    for path, fragment in cases:
        with pytest.raises(TraceError) as caught:
            load_trace(path)
        assert fragment in str(caught.value) and "\n" not in str(caught.value)
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    with pytest.raises(TraceError, match="not a readable"):
        load_trace(not_npz)
    with pytest.raises(TraceError, match="not a readable"):
        load_trace(tmp_path / "missing.npz")
