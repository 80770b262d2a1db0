"""Forced balance (`routing.strategy: balanced`): every expert gets the same tokens, whatever the scores."""

from __future__ import annotations

import torch

from moesim.routing import make_router
from moesim.scenario import scenario_from_dict
from moesim.sim.step import simulate


def test_every_expert_gets_the_same_tokens() -> None:
    router = make_router("balanced", num_experts=8, top_k=2)
    logits = torch.zeros(100, 8)
    logits[:, 0] = 10.0  # every token prefers expert 0: ignored
    assignment = router.route(logits)
    load = assignment.expert_load
    assert int(load.sum()) == 200 and int(load.max() - load.min()) <= 1  # 200 slots over 8 experts: 25 each
    assert torch.equal(assignment.expert_ids[3], torch.tensor([6, 7]))  # token 3: slots 6 and 7
    assert all(len(set(row.tolist())) == 2 for row in assignment.expert_ids)  # a token's experts are distinct
    assert torch.allclose(assignment.weights, torch.full((100, 2), 0.5))


def test_forced_balance_is_what_vendor_benchmarks_time() -> None:
    base = {
        "model": {"preset": "deepseek-v3", "num_layers": 2, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 8, "expert_popularity_skew": 1.0},
    }
    skewed = simulate(scenario_from_dict(base))
    forced = simulate(scenario_from_dict({**base, "routing": {"strategy": "balanced"}}))
    assert forced.load_imbalance < 1.01 < skewed.load_imbalance
    assert forced.step_time_s < skewed.step_time_s  # no rank waits for a hot expert
