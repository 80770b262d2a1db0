"""Group- and node-limited routing (DeepSeek-V2 device-limited, DeepSeek-V3 node-limited).

Experts are split into `num_expert_groups` equal groups (the devices or nodes that hold
them). A token first picks its `topk_groups` best groups, then its top-k experts inside
those groups only, which bounds how many devices or nodes its dispatch reaches.

A group's score is the best expert score in it (`group_score="max"`, DeepSeek-V2) or
the sum of its two best (`"top2_sum"`, DeepSeek-V3). DeepSeek-V2's weights are the
softmax probabilities of the chosen experts times `routed_scaling_factor`, not
renormalised (`Router` applies both conventions). Experts outside the chosen groups are
out of the running, as DeepSeek's own inference code masks them with -inf (Hugging
Face's port masks with 0.0, which differs only when a chosen group's scores are negative).
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.router import Choice, Router, check_score_function, scores_to_probs


def group_scores(grouped: torch.Tensor, group_score: str) -> torch.Tensor:
    """Score of each group [tokens, groups] from scores grouped as [tokens, groups, experts_per_group]."""
    best, best_index = grouped.max(dim=-1)
    if group_score == "max":
        return best
    if group_score == "top2_sum":
        if grouped.shape[-1] == 1:
            return best
        # the runner-up: mask the best and take the max again (exact with ties; on a GPU four fast kernels
        # beat a top-2 over many short rows)
        rest = grouped.clone()
        rest.scatter_(-1, best_index.unsqueeze(-1), float("-inf"))
        return best + rest.max(dim=-1).values
    raise ValueError(f"group_score must be 'max' or 'top2_sum', got {group_score!r}")


def topk_within_groups(
    scores: torch.Tensor, top_k: int, num_groups: int, groups_per_token: int, group_score: str = "max"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, expert ids) of each token's top-k experts inside its best `groups_per_token` groups.

    The other groups' experts are masked out of one top-k over all experts, as DeepSeek's
    reference code does (fewer kernels than gathering the chosen groups' scores).
    """
    num_tokens, num_experts = scores.shape
    if num_experts % num_groups:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by num_expert_groups ({num_groups})")
    if groups_per_token >= num_groups or num_groups == num_experts:
        # every group is in the running, or a group is one expert (its score is the expert's, for either
        # group score, and the best topk_groups >= top_k experts hold the best top_k): a plain top-k
        return torch.topk(scores, top_k, dim=-1)
    grouped = scores.view(num_tokens, num_groups, num_experts // num_groups)
    best_groups = torch.topk(group_scores(grouped, group_score), groups_per_token, dim=-1, sorted=False).indices
    left_out = torch.ones(num_tokens, num_groups, 1, dtype=torch.bool, device=scores.device)
    left_out = left_out.scatter_(1, best_groups.unsqueeze(-1), False)
    candidates = grouped.masked_fill(left_out, float("-inf")).view(num_tokens, num_experts)
    return torch.topk(candidates, top_k, dim=-1)


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
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        _check_groups(num_experts, top_k, num_expert_groups, topk_groups)
        if group_score not in ("max", "top2_sum"):
            raise ValueError(f"group_score must be 'max' or 'top2_sum', got {group_score!r}")
        check_score_function(score_function)
        self.num_expert_groups = num_expert_groups
        self.topk_groups = topk_groups
        self.group_score = group_score
        self.score_function = score_function

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        probs = scores_to_probs(logits, self.score_function)
        weights, expert_ids = topk_within_groups(
            probs, self.top_k, self.num_expert_groups, self.topk_groups, self.group_score
        )
        return Choice(expert_ids, weights, weights)


def _check_groups(num_experts: int, top_k: int, num_groups: int, groups_per_token: int) -> None:
    if num_groups < 1 or num_experts % num_groups:
        raise ValueError(f"num_expert_groups ({num_groups}) must divide num_experts ({num_experts})")
    if not 1 <= groups_per_token <= num_groups:
        raise ValueError(f"topk_groups must be between 1 and num_expert_groups ({num_groups}), got {groups_per_token}")
    if top_k > groups_per_token * (num_experts // num_groups):
        raise ValueError(f"topk_groups ({groups_per_token}) groups cannot hold top_k ({top_k}) experts")
