"""Invariants every routing rule keeps, on random scores (hypothesis)."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from moesim.routing import RULES, make_router


def options_for(rule: str, experts: int, top_k: int) -> dict[str, Any]:
    """Rule options that are valid for this many experts."""
    groups = 2 if experts % 2 == 0 and experts >= 2 else 1
    if rule in ("group_limited", "bias_balanced"):
        return {"num_expert_groups": groups, "topk_groups": groups}
    if rule == "two_level":
        return {"num_expert_groups": groups, "topk_groups": groups}
    if rule == "base":
        return {"candidates": min(experts, top_k + 1)}
    return {}


@st.composite
def cases(draw: Any) -> tuple[str, torch.Tensor, torch.Tensor, int, Any, str]:
    rule = draw(st.sampled_from(RULES))
    experts = draw(st.integers(1, 12))
    top_k = 2 if rule == "gshard_top2" else draw(st.integers(1, experts))
    if rule == "gshard_top2":
        experts = max(experts, 2)
    tokens = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.01, 1.0, 10.0]))
    logits = torch.randn(tokens, experts, generator=generator) * scale
    token_ids = torch.randint(0, 50, (tokens,), generator=generator)
    capacity_factor = draw(st.sampled_from([None, 0.25, 1.0, 1.25, 4.0]))
    policy = draw(st.sampled_from(["position", "probability"]))
    return rule, logits, token_ids, top_k, capacity_factor, policy


@given(cases())
def test_routing_invariants(case: tuple[str, torch.Tensor, torch.Tensor, int, Any, str]) -> None:
    rule, logits, token_ids, top_k, capacity_factor, policy = case
    experts = logits.shape[1]
    router = make_router(
        rule,
        num_experts=experts,
        top_k=top_k,
        capacity_factor=capacity_factor,
        drop_policy=policy,
        **options_for(rule, experts, top_k),
    )
    assignment = router.route(logits, token_ids)
    ids, weights, dropped = assignment.expert_ids, assignment.weights, assignment.dropped
    tokens = logits.shape[0]

    assert ids.shape[0] == tokens and ids.dtype == torch.long
    assert ((ids >= -1) & (ids < experts)).all()
    # no expert over capacity
    if assignment.capacity is not None:
        assert int(assignment.expert_load.max()) <= assignment.capacity
    # at most k experts per token (expert choice: any number, but each expert at most once)
    per_token = assignment.experts_per_token()
    if rule != "expert_choice":
        assert ids.shape[1] <= top_k and (per_token <= top_k).all()
    for row in ids.tolist():
        served = [expert for expert in row if expert >= 0]
        assert len(served) == len(set(served)), "an expert appears twice for one token"
    # weights: non-negative, zero on empty slots
    assert (weights >= 0).all() and torch.isfinite(weights).all()
    assert (weights[ids < 0] == 0).all()
    # dropped slots are marked and empty; the books balance
    assert (ids[dropped] == -1).all()
    assert assignment.num_requested == int((ids >= 0).sum()) + assignment.num_dropped
    assert int(assignment.expert_load.sum()) == int((ids >= 0).sum())
    if capacity_factor is None and rule not in ("base", "expert_choice"):
        assert assignment.num_dropped == 0  # dropless
    # same seed, same assignment
    again = make_router(
        rule,
        num_experts=experts,
        top_k=top_k,
        capacity_factor=capacity_factor,
        drop_policy=policy,
        **options_for(rule, experts, top_k),
    ).route(logits, token_ids)
    assert assignment.equals(again)


@given(st.integers(1, 64), st.integers(1, 8), st.sampled_from([0.5, 1.0, 1.25, 2.0]))
def test_raising_capacity_never_raises_drops(tokens: int, experts: int, factor: float) -> None:
    generator = torch.Generator().manual_seed(tokens * 100 + experts)
    logits = torch.randn(tokens, experts, generator=generator) * 3
    low = make_router("top_k", num_experts=experts, top_k=1, capacity_factor=factor).route(logits)
    high = make_router("top_k", num_experts=experts, top_k=1, capacity_factor=factor * 2).route(logits)
    assert high.num_dropped <= low.num_dropped
