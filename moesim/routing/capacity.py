"""Expert capacity and which over-capacity tokens are dropped.

`expert_capacity = ceil(capacity_factor x tokens x top_k / num_experts)` as in GShard,
Switch and DeepSpeed's `sharded_moe.py`; `capacity_factor=None` means dropless (as in
MegaBlocks and Megatron-Core's default): nothing is dropped.

Two drop policies, as Megatron-Core names them:
* `position`: an expert keeps the assignments that come first, first choices before
  second choices, earlier tokens before later ones (GShard's order of dispatch).
* `probability`: an expert keeps the assignments with the highest router probability
  (batch-prioritised routing, Riquelme et al. 2021).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: Optional[float]) -> Optional[int]:
    """Slots per expert, or None for dropless routing.

    Rounded up so that a capacity factor of 1.0 on a perfectly balanced batch drops
    nothing; never above the number of tokens (an expert cannot take a token twice),
    and at least 1.
    """
    if capacity_factor is None:
        return None
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 or None (dropless), got {capacity_factor}")
    # round away float noise (1.25 * 8 * 2 / 8 = 2.5000000000000004 must give 3, 1.1*10/1 = 11.000000000000002 must give 11)
    exact = round(capacity_factor * num_tokens * top_k / num_experts, 9)
    return max(1, min(num_tokens, math.ceil(exact)))


def rank_within_expert(expert_ids: torch.Tensor, priority_rank: torch.Tensor, rank_bound: int) -> torch.Tensor:
    """For each (flat) assignment, its place in its expert's queue (0 = served first).

    `priority_rank` holds distinct integers in [0, rank_bound): lower is served first.
    One sort of a combined key, no Python loop.
    """
    count = expert_ids.numel()
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(expert_ids.long() * rank_bound + priority_rank)
    sorted_experts = expert_ids[order]
    counts = torch.bincount(sorted_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(count, dtype=torch.long)
    rank[order] = torch.arange(count) - starts[sorted_experts]
    return rank


def apply_capacity(
    expert_ids: torch.Tensor,
    probs: torch.Tensor,
    capacity: Optional[int],
    policy: str = "position",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Enforce `capacity` on a [tokens, k] choice of experts.

    Returns (kept_ids, dropped): kept_ids has -1 where a slot was dropped or empty;
    dropped marks the slots refused for capacity. `probs` ([tokens, k]) ranks
    assignments under the `probability` policy.
    """
    dropped = torch.zeros_like(expert_ids, dtype=torch.bool)
    if capacity is None:
        return expert_ids, dropped
    if policy not in ("position", "probability"):
        raise ValueError(f"drop_policy must be 'position' or 'probability', got {policy!r}")
    num_tokens, slots = expert_ids.shape
    valid = expert_ids >= 0
    flat_valid = valid.reshape(-1)
    flat_ids = expert_ids.reshape(-1)[flat_valid]
    if policy == "position":
        # slot-major order: every first choice before any second choice, then token order
        slot = torch.arange(slots).repeat(num_tokens)
        token = torch.arange(num_tokens).repeat_interleave(slots)
        priority_rank = (slot * num_tokens + token)[flat_valid]
        bound = num_tokens * slots
    else:
        by_probability = torch.argsort(-probs.reshape(-1)[flat_valid].float(), stable=True)
        priority_rank = torch.empty_like(by_probability)
        priority_rank[by_probability] = torch.arange(by_probability.numel())
        bound = max(1, by_probability.numel())
    over = rank_within_expert(flat_ids, priority_rank, bound) >= capacity
    flat_dropped = torch.zeros(num_tokens * slots, dtype=torch.bool)
    flat_dropped[flat_valid.nonzero().squeeze(1)[over]] = True
    dropped = flat_dropped.view(num_tokens, slots)
    kept = expert_ids.masked_fill(dropped, -1)
    return kept, dropped
