"""Forced balance (`routing.strategy: balanced`): Megatron-Core's random logits, whatever the scores."""

from __future__ import annotations

import math

import torch

from moesim.routing import make_router
from moesim.scenario import scenario_from_dict
from moesim.sim.step import simulate


def test_scores_are_ignored_and_loads_are_binomial() -> None:
    """Each expert's load over T tokens is Binomial(T, k / E): mean T k / E, standard deviation sqrt(T (k/E)(1-k/E))."""
    experts, top_k, tokens = 128, 8, 32768
    router = make_router("balanced", num_experts=experts, top_k=top_k)
    logits = torch.zeros(tokens, experts)
    logits[:, 0] = 10.0  # every token prefers expert 0: ignored
    assignment = router.route(logits)
    load = assignment.expert_load.double()
    p = top_k / experts
    assert float(load.sum()) == tokens * top_k
    assert abs(float(load.mean()) - tokens * p) < 1e-9
    sigma = math.sqrt(tokens * p * (1 - p))  # 43.8 tokens around 2,048
    assert 0.8 * sigma < float(load.std()) < 1.2 * sigma  # 128 experts: the sample deviation within 20%
    assert float(load[0]) < tokens * p + 4 * sigma  # expert 0's high score did not count
    assert all(len(set(row.tolist())) == top_k for row in assignment.expert_ids[:1000])  # distinct experts
    assert torch.allclose(assignment.weights.sum(-1), torch.ones(tokens))


def test_a_tokens_experts_spread_over_the_ranks() -> None:
    """A random 8 of 128 experts falls on 16 x (1 - C(120, 8) / C(128, 8)) = 6.46 of 16 GPUs (8 experts a GPU) on
    average: the all-to-all's volume. Round-robin slots put all 8 on one GPU."""
    experts, top_k, ranks, tokens = 128, 8, 16, 20000
    assignment = make_router("balanced", num_experts=experts, top_k=top_k).route(torch.zeros(tokens, experts))
    ranks_of = assignment.expert_ids // (experts // ranks)
    distinct = torch.tensor([len(set(row.tolist())) for row in ranks_of]).double().mean()
    expected = ranks * (1 - math.comb(experts - experts // ranks, top_k) / math.comb(experts, top_k))
    assert abs(float(distinct) - expected) < 0.03


def test_the_same_seed_draws_the_same_routing() -> None:
    scores = torch.zeros(64, 16)
    first = make_router("balanced", num_experts=16, top_k=2, seed=3).route(scores)
    again = make_router("balanced", num_experts=16, top_k=2, seed=3).route(scores)
    other = make_router("balanced", num_experts=16, top_k=2, seed=4).route(scores)
    assert torch.equal(first.expert_ids, again.expert_ids)
    assert not torch.equal(first.expert_ids, other.expert_ids)


def test_forced_balance_is_what_vendor_benchmarks_time() -> None:
    base = {
        "model": {"preset": "deepseek-v3", "num_layers": 2, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 8, "expert_popularity_skew": 1.0},
    }
    skewed = simulate(scenario_from_dict(base))
    forced = simulate(scenario_from_dict({**base, "routing": {"strategy": "balanced"}}))
    # random draws are balanced in expectation only (binomial loads), skewed scores have hot experts
    assert forced.load_imbalance < skewed.load_imbalance
    assert forced.phase_seconds["experts"] < skewed.phase_seconds["experts"]  # no rank waits for a hot expert
