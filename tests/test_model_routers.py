"""Each model preset routes with its own published router, checked against that model's reference formula.

The references below are written out from the models' own implementations (Hugging Face
`transformers` modeling files for Mixtral, Qwen3-MoE, OLMoE and DBRX; DeepSeek's
`modeling_deepseek.py` for V2 and its inference `model.py` for V3), independently of
moesim's routers, which must give the same experts and the same weights.
"""

from __future__ import annotations

import pytest
import torch

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.scenario_routing import router_for_scenario

TOKENS = 512


def softmax_top_k(logits: torch.Tensor, k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral, Qwen3-MoE (norm_topk_prob), OLMoE (no renormalisation), DBRX (top-k weights / their L1 norm)."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if renormalise:
        weights = weights / torch.norm(weights, p=1, dim=-1, keepdim=True)
    return experts, weights


def deepseek_v2(logits: torch.Tensor, k: int, groups: int, groups_per_token: int, scale: float):
    """group_limited_greedy: softmax, groups by their best expert, masked top-k, weights x routed_scaling_factor."""
    scores = torch.softmax(logits.float(), dim=-1)
    tokens = scores.shape[0]
    group_scores = scores.view(tokens, groups, -1).max(dim=-1).values
    chosen_groups = torch.topk(group_scores, groups_per_token, dim=-1).indices
    mask = torch.zeros_like(group_scores).scatter_(1, chosen_groups, 1.0).bool()
    mask = mask.unsqueeze(-1).expand(tokens, groups, scores.shape[1] // groups).reshape(tokens, -1)
    weights, experts = torch.topk(scores.masked_fill(~mask, 0.0), k, dim=-1)
    return experts, weights * scale


def deepseek_v3(logits: torch.Tensor, bias: torch.Tensor, k: int, groups: int, groups_per_token: int, scale: float):
    """noaux_tc: sigmoid, bias for the choice only, groups by their two best biased scores, renormalised, x scale."""
    scores = torch.sigmoid(logits.float())
    biased = scores + bias
    tokens = scores.shape[0]
    group_scores = biased.view(tokens, groups, -1).topk(2, dim=-1).values.sum(dim=-1)
    chosen_groups = torch.topk(group_scores, groups_per_token, dim=-1).indices
    mask = torch.zeros_like(group_scores).scatter_(1, chosen_groups, 1.0).bool()
    mask = mask.unsqueeze(-1).expand(tokens, groups, scores.shape[1] // groups).reshape(tokens, -1)
    experts = torch.topk(biased.masked_fill(~mask, float("-inf")), k, dim=-1).indices
    weights = scores.gather(1, experts)
    return experts, weights / weights.sum(dim=-1, keepdim=True) * scale


def scenario_for(preset: str, **routing):  # type: ignore[no-untyped-def]
    return scenario_from_dict(
        {
            "model": preset,
            "cluster": {"num_nodes": 1, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "routing": routing,
        }
    )


def same_routing(assignment, experts: torch.Tensor, weights: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Same experts per token and the same weight on each (slot order aside)."""
    ours = torch.zeros(experts.shape[0], assignment.num_experts).scatter_(1, assignment.expert_ids, assignment.weights)
    reference = torch.zeros_like(ours).scatter_(1, experts, weights.float())
    assert torch.equal(ours > 0, reference > 0), "different experts chosen"
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6), "different weights"


@pytest.mark.parametrize(
    "preset, renormalise",
    [
        ("mixtral-8x7b", True),
        ("mixtral-8x22b", True),
        ("qwen3-30b-a3b", True),
        ("olmoe-1b-7b", False),
        ("dbrx", True),
    ],
)
def test_softmax_top_k_models(preset: str, renormalise: bool) -> None:
    scenario = scenario_for(preset)
    model = scenario.model
    assert scenario.routing.strategy == "top_k"
    logits = torch.randn(TOKENS, model.num_experts, generator=torch.Generator().manual_seed(1)) * 2
    assignment = router_for_scenario(scenario).route(logits)
    same_routing(assignment, *softmax_top_k(logits, model.top_k, renormalise))


def test_deepseek_v2_group_limited_greedy() -> None:
    scenario = scenario_for("deepseek-v2")
    model = scenario.model
    assert (scenario.routing.strategy, scenario.routing.group_score) == ("group_limited", "max")
    logits = torch.randn(TOKENS, model.num_experts, generator=torch.Generator().manual_seed(2)) * 2
    assignment = router_for_scenario(scenario).route(logits)
    same_routing(assignment, *deepseek_v2(logits, 6, 8, 3, 16.0))
    assert assignment.weights.sum(dim=-1).max() > 1.5  # x16, not renormalised


def test_deepseek_v3_noaux_tc_with_a_trained_bias() -> None:
    scenario = scenario_for("deepseek-v3")
    model = scenario.model
    assert scenario.routing.strategy == "bias_balanced"
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(TOKENS, model.num_experts, generator=generator)
    bias = torch.randn(model.num_experts, generator=generator) * 0.3  # some negative: biased scores below 0 too
    router = router_for_scenario(scenario)
    router.bias = bias.clone()  # type: ignore[attr-defined]
    assignment = router.route(logits)
    same_routing(assignment, *deepseek_v3(logits, bias, 8, 8, 4, 2.5))
    assert torch.allclose(assignment.weights.sum(dim=-1), torch.full((TOKENS,), 2.5))


def test_a_rule_that_cannot_honour_the_model_is_an_error() -> None:
    with pytest.raises(MoesimError, match="expert groups.*correction bias"):
        router_for_scenario(scenario_for("deepseek-v3"), "expert_choice")
    with pytest.raises(MoesimError, match="sigmoid scores"):
        router_for_scenario(scenario_for("deepseek-v3", num_expert_groups=1), "sinkhorn")
    with pytest.raises(MoesimError, match="correction bias"):
        router_for_scenario(scenario_for("deepseek-v3"), "group_limited")
    with pytest.raises(MoesimError, match="no option 'bogus'"):
        router_for_scenario(scenario_for("mixtral-8x7b", options={"bogus": 1}))
    # opting out explicitly is honoured: no groups, no bias, softmax
    free = scenario_from_dict(
        {
            "model": {"preset": "deepseek-v3", "router_bias": False},
            "cluster": {"num_nodes": 1, "gpus_per_node": 8},
            "parallelism": {"ep_size": 8},
            "routing": {"strategy": "expert_choice", "num_expert_groups": 1, "score_function": "softmax"},
        }
    )
    assert router_for_scenario(free).name == "expert_choice"
