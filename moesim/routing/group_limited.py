"""Group- and node-limited routing (DeepSeek-V2 device-limited, DeepSeek-V3 node-limited).

Experts are split into `num_expert_groups` equal groups (the devices or nodes that hold
them). A token first picks its `topk_groups` best groups, then its top-k experts inside
those groups only, which bounds how many devices or nodes its dispatch reaches.

A group's score is the best expert score in it (`group_score="max"`, DeepSeek-V2) or
the sum of its two best (`"top2_sum"`, DeepSeek-V3). DeepSeek-V2's weights are the
softmax probabilities of the chosen experts times `routed_scaling_factor`, not
renormalised.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.router import Choice, Router, scores_to_probs


def limit_to_groups(
    scores: torch.Tensor, num_groups: int, groups_per_token: int, group_score: str = "max"
) -> torch.Tensor:
    """`scores` with every expert outside each token's best `groups_per_token` groups set to -inf."""
    num_tokens, num_experts = scores.shape
    if num_experts % num_groups:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by num_expert_groups ({num_groups})")
    if groups_per_token >= num_groups:
        return scores
    grouped = scores.view(num_tokens, num_groups, num_experts // num_groups)
    if group_score == "max":
        per_group = grouped.max(dim=-1).values
    elif group_score == "top2_sum":
        per_group = torch.topk(grouped, min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
    else:
        raise ValueError(f"group_score must be 'max' or 'top2_sum', got {group_score!r}")
    best_groups = torch.topk(per_group, groups_per_token, dim=-1).indices
    allowed = torch.zeros(num_tokens, num_groups, dtype=torch.bool)
    allowed.scatter_(1, best_groups, True)
    mask = allowed.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
    return scores.masked_fill(~mask, float("-inf"))


class GroupLimitedRouter(Router):
    """Top-k restricted to each token's best expert groups (nodes or devices)."""

    name = "group_limited"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        num_expert_groups: int = 1,
        topk_groups: int = 1,
        group_score: str = "max",
        score_function: str = "softmax",
        normalize_weights: bool = False,
        routed_scaling_factor: float = 1.0,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        _check_groups(num_experts, top_k, num_expert_groups, topk_groups)
        self.num_expert_groups = num_expert_groups
        self.topk_groups = topk_groups
        self.group_score = group_score
        self.score_function = score_function
        self.normalize_weights = normalize_weights
        self.routed_scaling_factor = routed_scaling_factor

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        probs = scores_to_probs(logits, self.score_function)
        allowed = limit_to_groups(probs, self.num_expert_groups, self.topk_groups, self.group_score)
        weights, expert_ids = torch.topk(allowed, self.top_k, dim=-1)
        if self.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        weights = weights * self.routed_scaling_factor
        return Choice(expert_ids, weights, weights)


def _check_groups(num_experts: int, top_k: int, num_groups: int, groups_per_token: int) -> None:
    if num_groups < 1 or num_experts % num_groups:
        raise ValueError(f"num_expert_groups ({num_groups}) must divide num_experts ({num_experts})")
    if not 1 <= groups_per_token <= num_groups:
        raise ValueError(f"topk_groups must be between 1 and num_expert_groups ({num_groups}), got {groups_per_token}")
    if top_k > groups_per_token * (num_experts // num_groups):
        raise ValueError(f"topk_groups ({groups_per_token}) groups cannot hold top_k ({top_k}) experts")
