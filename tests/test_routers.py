"""Each routing rule against its definition, with hand-checked or independently solved numbers."""

from __future__ import annotations

import inspect
import math
from typing import get_args

import numpy as np
import pytest
import torch

from moesim.errors import MoesimError
from moesim.routing import RULES, make_router, rule_options
from moesim.routing.metrics import load_imbalance
from moesim.routing.names import ROUTING_STRATEGIES, RoutingStrategy
from moesim.routing.registry import _CLASSES
from moesim.routing.rules import RULE_TABLE


def logits_for(tokens: int, experts: int, seed: int = 0, skew: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    bias = -skew * torch.log(torch.arange(1, experts + 1, dtype=torch.float32))
    return torch.randn(tokens, experts, generator=generator) + bias


def test_rules_listed() -> None:
    assert set(RULES) >= {"top_k", "expert_choice", "base", "sinkhorn", "hash", "bias_balanced", "group_limited"}
    assert "noise_std" in rule_options("noisy_top_k")


def _signature_options(cls: type) -> list[str]:
    """The keyword options a router class's constructors take, read from their signatures (mro order)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in klass.__dict__:
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            skip = ("self", "num_experts", "top_k", "capacity_factor")
            kinds = (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            if parameter.kind in kinds and parameter.name not in skip and parameter.name not in names:
                names.append(parameter.name)
    return names


def test_rule_table_matches_the_classes() -> None:
    """The torch-free table a scenario is checked against lists each class's options, in order, and its name."""
    assert tuple(rule.name for rule in RULE_TABLE) == RULES == ROUTING_STRATEGIES
    assert get_args(RoutingStrategy) == RULES
    for rule in RULE_TABLE:
        cls = _CLASSES[rule.name]
        assert cls.name == rule.name
        assert rule_options(rule.name) == _signature_options(cls), rule.name


def test_make_router_errors_name_the_fix() -> None:
    with pytest.raises(MoesimError, match="did you mean 'top_k'"):
        make_router("topk", num_experts=8)
    with pytest.raises(MoesimError, match="no option 'nosie_std'.*noise_std"):
        make_router("noisy_top_k", num_experts=8, nosie_std=1.0)
    with pytest.raises(MoesimError, match="top_k"):
        make_router("top_k", num_experts=8, top_k=9)


def test_softmax_before_and_after_topk() -> None:
    logits = logits_for(64, 8)
    switch = make_router("top_k", num_experts=8, top_k=2).route(logits)
    mixtral = make_router("top_k", num_experts=8, top_k=2, softmax_order="after_topk").route(logits)
    renormalised = make_router("top_k", num_experts=8, top_k=2, normalize_weights=True).route(logits)
    assert torch.equal(switch.expert_ids, mixtral.expert_ids)
    probs = torch.softmax(logits, dim=-1)
    assert torch.allclose(switch.weights, probs.gather(1, switch.expert_ids))
    # top-k then softmax = softmax then top-k then renormalise
    assert torch.allclose(mixtral.weights, renormalised.weights, atol=1e-6)
    assert torch.allclose(mixtral.weights.sum(-1), torch.ones(64))


def test_noisy_top_k_changes_choices_and_is_seeded() -> None:
    logits = logits_for(512, 8)
    plain = make_router("top_k", num_experts=8, top_k=2).route(logits)
    noisy = make_router("noisy_top_k", num_experts=8, top_k=2, noise_std=1.0)
    first, again = noisy.route(logits), noisy.route(logits)
    assert first.equals(again)
    assert not torch.equal(first.expert_ids, plain.expert_ids)
    other_seed = make_router("noisy_top_k", num_experts=8, top_k=2, noise_std=1.0, seed=1).route(logits)
    assert not torch.equal(first.expert_ids, other_seed.expert_ids)


def test_gshard_second_expert_kept_with_probability_2g2() -> None:
    logits = logits_for(20000, 8, seed=3)
    assignment = make_router("gshard_top2", num_experts=8).route(logits)
    top = torch.topk(torch.softmax(logits, -1), 2, -1).values
    g2 = top[:, 1] / top.sum(-1)
    expected = torch.clamp(2 * g2, max=1.0).mean().item()
    kept = (assignment.expert_ids[:, 1] >= 0).float().mean().item()
    assert kept == pytest.approx(expected, abs=0.015)
    assert (assignment.expert_ids[:, 0] >= 0).all()
    assert assignment.num_dropped == 0  # not kept by design is not a drop


def test_expert_choice_fills_every_expert_exactly() -> None:
    logits = logits_for(1000, 16, skew=1.0)
    assignment = make_router("expert_choice", num_experts=16, top_k=2, capacity_factor=1.0).route(logits)
    capacity = assignment.capacity
    assert capacity == 125  # 1.0 x 1000 x 2 / 16
    assert assignment.expert_load.tolist() == [capacity] * 16
    assert assignment.num_dropped == 0
    assert assignment.tokens_without_expert == int((assignment.experts_per_token() == 0).sum()) > 0
    # each expert took its highest-probability tokens
    probs = torch.softmax(logits, -1)
    routing_map = assignment.routing_map()
    for expert in (0, 7, 15):
        chosen = probs[routing_map[:, expert], expert]
        rest = probs[~routing_map[:, expert], expert]
        assert chosen.min() >= rest.max()


def _served_affinity(assignment, logits: torch.Tensor) -> float:
    rows = torch.arange(logits.shape[0]).unsqueeze(1).expand_as(assignment.expert_ids)
    return float(logits[rows[assignment.served], assignment.expert_ids[assignment.served]].double().sum())


@pytest.mark.parametrize("tokens, experts, seed", [(32, 4, 0), (48, 8, 1), (30, 4, 2), (64, 16, 3)])
def test_base_matches_scipy_on_the_capacity_expanded_matrix(tokens: int, experts: int, seed: int) -> None:
    """BASE's optimum equals scipy's linear_sum_assignment on the matrix with each expert repeated capacity times."""
    from scipy.optimize import linear_sum_assignment

    logits = logits_for(tokens, experts, seed=seed, skew=0.7)
    assignment = make_router("base", num_experts=experts, top_k=1).route(logits)
    capacity = assignment.capacity
    assert capacity == -(-tokens // experts)
    expanded = np.repeat(logits.double().numpy(), capacity, axis=1)
    rows, cols = linear_sum_assignment(expanded, maximize=True)
    assert _served_affinity(assignment, logits) == pytest.approx(expanded[rows, cols].sum(), abs=1e-4)
    assert int(assignment.expert_load.max()) <= capacity
    assert (assignment.experts_per_token() == 1).all()


def test_base_top2_matches_a_linear_program() -> None:
    """With k = 2 distinct experts per token: the optimum of the (integral) transportation LP."""
    from scipy.optimize import linprog

    tokens, experts, k = 24, 6, 2
    logits = logits_for(tokens, experts, seed=5, skew=0.5)
    assignment = make_router("base", num_experts=experts, top_k=k).route(logits)
    capacity = assignment.capacity
    per_token = np.kron(np.eye(tokens), np.ones(experts))  # sum_e x[t, e] = k
    per_expert = np.kron(np.ones(tokens), np.eye(experts))  # sum_t x[t, e] <= capacity
    result = linprog(
        -logits.double().numpy().reshape(-1),
        A_ub=per_expert,
        b_ub=np.full(experts, capacity),
        A_eq=per_token,
        b_eq=np.full(tokens, k),
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0
    assert _served_affinity(assignment, logits) == pytest.approx(-result.fun, abs=1e-4)
    assert (assignment.experts_per_token() == k).all()
    assert all(len(set(row)) == k for row in assignment.expert_ids.tolist())


def test_base_candidates_report_gap_and_low_capacity_drops() -> None:
    logits = logits_for(512, 16, skew=1.5)
    restricted = make_router("base", num_experts=16, candidates=2, compare_exact=True).route(logits)
    assert restricted.info["gap_to_exact"] >= 0
    assert restricted.info["candidates_used"] >= 2
    assert restricted.expert_load.max() <= restricted.capacity
    short = make_router("base", num_experts=16, capacity_factor=0.5).route(logits)
    assert short.num_dropped == 256 and short.expert_load.tolist() == [16] * 16


def test_sinkhorn_balances_skewed_scores() -> None:
    logits = logits_for(4096, 16, skew=1.0)
    plain = make_router("top_k", num_experts=16, top_k=1).route(logits)
    balanced = make_router("sinkhorn", num_experts=16, top_k=1).route(logits)
    assert load_imbalance(balanced) < 1.2 < load_imbalance(plain)
    assert torch.allclose(balanced.weights.squeeze(1), torch.sigmoid(logits.gather(1, balanced.expert_ids)).squeeze(1))


def test_sinkhorn_plan_has_uniform_marginals_and_ranks_as_the_log_domain_reference() -> None:
    """The scaling-vector plan against a log-domain Sinkhorn in float64 written out here."""
    from moesim.routing.sinkhorn import sinkhorn_plan

    logits = logits_for(512, 8, skew=1.0) * 4  # spread scores: exp() of them would overflow without the row shift
    plan, used = sinkhorn_plan(logits, iterations=200, tolerance=1e-6)
    assert used < 200
    assert torch.allclose(plan.sum(dim=1), torch.full((512,), 1 / 512), rtol=1e-5)
    assert torch.allclose(plan.sum(dim=0), torch.full((8,), 1 / 8), rtol=1e-5)
    reference = logits.double()
    for _ in range(200):
        reference = reference - torch.logsumexp(reference, dim=1, keepdim=True) - math.log(512)
        reference = reference - torch.logsumexp(reference, dim=0, keepdim=True) - math.log(8)
    assert torch.allclose(plan.double().log(), reference, atol=1e-3)


def test_hash_routing_is_a_fixed_function_of_the_token_id() -> None:
    router = make_router("hash", num_experts=8, top_k=2)
    ids = torch.tensor([5, 9, 5, 1234, 9])
    assignment = router.route(torch.zeros(5, 8), ids)
    assert torch.equal(assignment.expert_ids[0], assignment.expert_ids[2])
    assert torch.equal(assignment.expert_ids[1], assignment.expert_ids[4])
    assert all(len(set(row)) == 2 for row in assignment.expert_ids.tolist())
    assert torch.equal(
        assignment.expert_ids, make_router("hash", num_experts=8, top_k=2).route(torch.randn(5, 8), ids).expert_ids
    )
    with pytest.raises(ValueError, match="token_ids"):
        router.route(torch.zeros(5, 8))


def test_balanced_hash_spreads_frequent_ids() -> None:
    generator = np.random.default_rng(0)
    vocab = 1000
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.2
    ids = torch.from_numpy(generator.choice(vocab, size=20000, p=weights / weights.sum()))
    counts = torch.bincount(ids, minlength=vocab).double()
    plain = make_router("hash", num_experts=16).route(torch.zeros(len(ids), 16), ids)
    balanced = make_router("balanced_hash", num_experts=16, token_counts=counts).route(torch.zeros(len(ids), 16), ids)
    assert load_imbalance(balanced) < load_imbalance(plain)
    # a single id cannot be split: the best any table can do is the most frequent id's count
    # or the mean load, whichever is larger; the table stays within 5% of that bound
    bound = max(float(counts.max()), len(ids) / 16)
    assert float(balanced.expert_load.max()) <= 1.05 * bound


def test_bias_balanced_weights_choice_and_update() -> None:
    logits = logits_for(256, 16, skew=1.0)
    router = make_router("bias_balanced", num_experts=16, top_k=4, routed_scaling_factor=2.5, bias_update_rate=0.1)
    assignment = router.route(logits)
    affinity = torch.sigmoid(logits).gather(1, assignment.expert_ids)
    assert torch.allclose(assignment.weights, affinity / affinity.sum(-1, keepdim=True) * 2.5)
    load = assignment.expert_load
    before = router.bias.clone()
    router.update_bias([load, load])  # two data-parallel ranks: summed, then compared with the mean
    step = router.bias - before
    mean = load.double().mean()
    assert torch.all(step[load.double() > mean] < 0) and torch.all(step[load.double() < mean] > 0)
    # the bias steers the choice, not the weights: weights still come from the plain sigmoid
    biased = router.route(logits)
    chosen = torch.sigmoid(logits).gather(1, biased.expert_ids)
    assert torch.allclose(biased.weights, chosen / chosen.sum(-1, keepdim=True) * 2.5)


def test_bias_balancing_evens_out_load_over_steps() -> None:
    """Skewed scores start near 5x imbalance; the bias brings it to the noise floor (~1.2 at 128 tokens/expert)."""
    router = make_router("bias_balanced", num_experts=16, top_k=2, bias_update_rate=0.01)
    history = []
    for step in range(100):
        assignment = router.route(logits_for(1024, 16, seed=step, skew=1.0))
        history.append(load_imbalance(assignment))
        router.update_bias(assignment.expert_load)
    assert history[0] > 4.0
    assert sum(history[-20:]) / 20 < 1.3


@pytest.mark.parametrize("group_score", ["max", "top2_sum"])
def test_group_limited_stays_in_its_groups(group_score: str) -> None:
    logits = logits_for(512, 32)
    router = make_router(
        "group_limited", num_experts=32, top_k=6, num_expert_groups=8, topk_groups=3, group_score=group_score
    )
    assignment = router.route(logits)
    groups_used = [len(set(row)) for row in (assignment.expert_ids // 4).tolist()]
    assert max(groups_used) <= 3
    unlimited = make_router("top_k", num_experts=32, top_k=6).route(logits)
    assert max(len(set(row)) for row in (unlimited.expert_ids // 4).tolist()) > 3


def test_deepseek_v3_group_choice_uses_top2_sum_of_biased_scores() -> None:
    """Hand case: 4 experts in 2 groups, 1 group per token; group 1's two best beat group 0's best pair."""
    logits = torch.logit(torch.tensor([[0.9, 0.1, 0.6, 0.6]]))
    router = make_router("bias_balanced", num_experts=4, top_k=1, num_expert_groups=2, topk_groups=1)
    assert router.route(logits).expert_ids.tolist() == [[2]]  # 0.6 + 0.6 > 0.9 + 0.1
    with_max = make_router(
        "group_limited", num_experts=4, top_k=1, num_expert_groups=2, topk_groups=1, score_function="sigmoid"
    )
    assert with_max.route(logits).expert_ids.tolist() == [[0]]  # DeepSeek-V2: the best single expert's group


def test_two_level_gating() -> None:
    logits = logits_for(256, 16)
    grouped = make_router("two_level", num_experts=16, top_k=2, num_expert_groups=4, topk_groups=1).route(logits)
    assert all(len(set(row)) == 1 for row in (grouped.expert_ids // 4).tolist())
    gate = torch.cat([torch.linspace(-3, 3, 256).unsqueeze(1), logits], dim=1)
    router = make_router("two_level", num_experts=16, top_k=2, mode="dense_or_experts")
    conditional = router.route(gate)
    assert conditional.dense_path is not None
    dense = conditional.dense_path
    assert dense.sum() == 128 and (conditional.expert_ids[dense] == -1).all()
    assert conditional.num_dropped == 0 and conditional.tokens_without_expert == 0
    with pytest.raises(ValueError, match=r"\[tokens, 17\]"):
        router.route(logits)


def test_shared_experts_and_bad_scores() -> None:
    router = make_router("top_k", num_experts=8, top_k=2, num_shared_experts=2)
    assert router.route(logits_for(4, 8)).num_shared_experts == 2
    with pytest.raises(ValueError, match="NaN"):
        router.route(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\[tokens, 8\]"):
        router.route(torch.zeros(4, 7))
