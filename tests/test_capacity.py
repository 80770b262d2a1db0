"""Expert capacity and dropping, on hand-worked examples and rounding edges."""

from __future__ import annotations

import torch

from moesim.routing import apply_capacity, expert_capacity


def test_capacity_formula_and_rounding() -> None:
    assert expert_capacity(8, 8, 2, 1.25) == 3  # 1.25 x 8 x 2 / 8 = 2.5 -> 3
    assert expert_capacity(8, 8, 2, 1.0) == 2  # exact, no float noise (1.0 x 16 / 8)
    assert expert_capacity(10, 1, 1, 1.1) == 10  # 11.000000000000002 must not become 12; capped at tokens
    assert expert_capacity(100, 3, 1, 1.0) == 34  # 33.33 -> 34
    assert expert_capacity(4096, 64, 8, 1.25) == 640
    assert expert_capacity(8, 8, 2, None) is None  # dropless
    assert expert_capacity(3, 64, 1, 0.01) == 1  # never zero


def test_capacity_larger_than_tokens_is_clamped() -> None:
    """A known crash elsewhere: capacity above the token count (top-k over too few rows)."""
    assert expert_capacity(4, 2, 1, 10.0) == 4
    ids = torch.tensor([[0], [0], [1], [0]])
    kept, dropped = apply_capacity(ids, torch.ones(4, 1), expert_capacity(4, 2, 1, 10.0), "position")
    assert torch.equal(kept, ids) and not dropped.any()


def test_position_policy_first_choices_before_second() -> None:
    ids = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    kept, dropped = apply_capacity(ids, probs, 2, "position")
    # expert 0: first choices of tokens 0, 1, 3 (slot 0) then token 2 (slot 1) -> tokens 0, 1 kept
    # expert 1: first choice of token 2, then second choices of tokens 0, 1, 3 -> tokens 2, 0 kept
    assert kept.tolist() == [[0, 1], [0, -1], [1, -1], [-1, -1]]
    assert dropped.tolist() == [[False, False], [False, True], [False, True], [True, True]]


def test_probability_policy_keeps_the_most_confident() -> None:
    ids = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    kept, _ = apply_capacity(ids, probs, 2, "probability")
    # expert 0 candidates: 0.6 (t0), 0.7 (t1), 0.1 (t2), 0.8 (t3) -> t3, t1
    # expert 1 candidates: 0.4 (t0), 0.3 (t1), 0.9 (t2), 0.2 (t3) -> t2, t0
    assert kept.tolist() == [[-1, 1], [0, -1], [1, -1], [0, -1]]


def test_empty_and_unchosen_slots() -> None:
    kept, dropped = apply_capacity(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), 1, "position")
    assert kept.shape == (0, 2) and dropped.shape == (0, 2)
    ids = torch.tensor([[0, -1], [0, -1]])
    kept, dropped = apply_capacity(ids, torch.ones(2, 2), 1, "position")
    assert kept.tolist() == [[0, -1], [-1, -1]] and dropped.tolist() == [[False, False], [True, False]]
