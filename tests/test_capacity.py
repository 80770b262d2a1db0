"""Expert capacity and dropping, on hand-worked examples and rounding edges."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from moesim.routing import apply_capacity, expert_capacity
from moesim.routing.capacity import position_in_queue_dense, position_in_queue_sorted, rank_within_expert
from moesim.routing.expert_choice import slots_by_expert
from moesim.routing.router import group_slots


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


@given(
    tokens=st.integers(1, 40),
    experts=st.integers(1, 9),
    slots=st.integers(1, 4),
    empty=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_dense_queue_equals_the_sorted_queue(tokens: int, experts: int, slots: int, empty: float, seed: int) -> None:
    """The dense queue and the short-key sort place every slot where the combined-key sort does."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, experts, (tokens, slots), generator=generator)
    ids = ids.masked_fill(torch.rand(tokens, slots, generator=generator) < empty, -1)
    valid = ids >= 0
    slot = torch.arange(slots).repeat(tokens)
    token = torch.arange(tokens).repeat_interleave(slots)
    flat = torch.where(valid.reshape(-1), ids.reshape(-1), 2**31)
    by_sort = rank_within_expert(flat, slot * tokens + token, tokens * slots).view(tokens, slots)
    for queue in (position_in_queue_dense, position_in_queue_sorted):
        assert torch.equal((queue(ids, experts) - 1)[valid], by_sort[valid]), queue.__name__
    assert not position_in_queue_dense(ids, experts)[~valid].any()  # empty slots never count against a capacity


def test_expert_choice_slots_by_expert_serve_the_same_pairs_as_the_cpu_layout() -> None:
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(50, 6, generator=generator), dim=-1)
    gate, picks = torch.topk(probs.t(), 12, dim=-1, sorted=False)
    ids, weights = slots_by_expert(probs, picks)
    experts = torch.arange(6).unsqueeze(1).expand_as(picks)
    compact_ids, compact_weights = group_slots(picks.reshape(-1), experts.reshape(-1), gate.reshape(-1), 50)
    pairs = {(t, int(e), float(w)) for t in range(50) for e, w in zip(ids[t], weights[t]) if e >= 0}
    compact = {(t, int(e), float(w)) for t in range(50) for e, w in zip(compact_ids[t], compact_weights[t]) if e >= 0}
    assert pairs == compact and len(pairs) == 6 * 12
