"""Expert capacity and which over-capacity tokens are dropped.

`expert_capacity = ceil(capacity_factor x tokens x top_k / num_experts)` as in GShard,
Switch and DeepSpeed's `sharded_moe.py`; `capacity_factor=None` means dropless (as in
MegaBlocks and Megatron-Core's default): nothing is dropped.

Two drop policies, as Megatron-Core names them:
* `position`: an expert keeps the assignments that come first, first choices before
  second choices, earlier tokens before later ones (GShard's order of dispatch).
* `probability`: an expert keeps the assignments with the highest router probability
  (batch-prioritised routing, Riquelme et al. 2021).

Several ways to find each assignment's place in its expert's queue, with the same answer:
a sort of a combined (expert, priority) key for the probability policy; for the position
policy a stable sort of the expert ids alone in slot-major order (short keys), or off the
CPU, while its table stays small (`DENSE_QUEUE_TABLE`), GShard's dense way: an
[experts, slots x tokens] table of hits summed along the tokens, with no sort at all; on
a GPU with Triton, one kernel that counts each expert's hits in that order and writes the
drops directly (`moesim.routing.fused`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from moesim.routing import fused


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
    # round away float noise (1.25 * 8 * 2 / 8 = 2.5000000000000004 must give 3, 1.1*10/1 = 11.000000000000002 must
    # give 11)
    exact = round(capacity_factor * num_tokens * top_k / num_experts, 9)
    return max(1, min(num_tokens, math.ceil(exact)))


_NO_EXPERT = 2**31
"""Sort key of empty slots: after every expert (keys are expert x bound + priority, bound < 2^31)."""


def rank_within_expert(expert_ids: torch.Tensor, priority_rank: torch.Tensor, rank_bound: int) -> torch.Tensor:
    """For each (flat) assignment, its place in its expert's queue (0 = served first).

    `priority_rank` holds distinct integers in [0, rank_bound): lower is served first.
    One sort of a combined key; each expert's queue starts where its id first appears in
    the sorted keys (a binary search), so no count of experts is needed and nothing waits
    for the device.
    """
    count = expert_ids.numel()
    device = expert_ids.device
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.argsort(expert_ids.long() * rank_bound + priority_rank)
    sorted_experts = expert_ids[order].long().contiguous()
    starts = torch.searchsorted(sorted_experts, sorted_experts, side="left")
    rank = torch.empty(count, dtype=torch.long, device=device)
    rank[order] = torch.arange(count, device=device) - starts
    return rank


def position_in_queue_dense(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Each slot's place (1 = first) in its expert's queue under the position policy, [tokens, k].

    Slot-major order (every first choice before any second choice, then token order): a
    table of hits [experts + 1, k x tokens] summed along its rows (a scan over the
    innermost dimension, the fast one on a GPU), read back at each slot's expert. Empty
    slots (-1) land in a spare row, cleared before the sum: their place is 0, never over
    a capacity.
    """
    num_tokens, slots = expert_ids.shape
    row = torch.remainder(expert_ids.t(), num_experts + 1).reshape(1, -1)  # -1 -> the spare row
    hits = torch.zeros(num_experts + 1, slots * num_tokens, dtype=torch.int32, device=expert_ids.device)
    hits.scatter_(0, row, 1)[num_experts].zero_()
    return hits.cumsum_(1).gather(0, row).view(slots, num_tokens).t()


def position_in_queue_sorted(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Each slot's place (1 = first) in its expert's queue under the position policy, [tokens, k].

    One stable sort of the expert ids in slot-major order (short integer keys: few radix
    passes on a GPU); within an expert the sort keeps that order, so a slot's place is
    its distance from where its expert's run starts. Empty slots queue as a spare expert.
    """
    num_tokens, slots = expert_ids.shape
    key_type = torch.int16 if num_experts < 2**15 - 1 else torch.int32
    keys = torch.remainder(expert_ids.t(), num_experts + 1).reshape(-1).to(key_type)  # -1 -> the spare expert
    sorted_keys, order = torch.sort(keys, stable=True)
    starts = torch.searchsorted(sorted_keys, sorted_keys, side="left")
    place = torch.empty(keys.numel(), dtype=torch.long, device=keys.device)
    place[order] = torch.arange(1, keys.numel() + 1, device=keys.device) - starts
    return place.view(slots, num_tokens).t()


DENSE_QUEUE_TABLE = 2**20
"""Entries of the dense queue table up to which it is used off the CPU; a larger table loses to the sort."""


def apply_capacity(
    expert_ids: torch.Tensor,
    probs: torch.Tensor,
    capacity: Optional[int],
    policy: str = "position",
    num_experts: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Enforce `capacity` on a [tokens, k] choice of experts.

    Returns (kept_ids, dropped): kept_ids has -1 where a slot was dropped or empty;
    dropped marks the slots refused for capacity. `probs` ([tokens, k]) ranks
    assignments under the `probability` policy. Every slot is ranked (empty ones queue
    behind all experts), so the shapes never depend on the data. The position policy sorts
    short keys (the shortest when `num_experts` is given), or off the CPU, given
    `num_experts`, reads a small dense queue table (empty slots there take place 0).
    """
    if capacity is None:
        return expert_ids, torch.zeros_like(expert_ids, dtype=torch.bool)
    if policy not in ("position", "probability"):
        raise ValueError(f"drop_policy must be 'position' or 'probability', got {policy!r}")
    num_tokens, slots = expert_ids.shape
    if policy == "position":
        if num_experts is not None and fused.available(expert_ids):
            result = fused.queue_drops_fused(expert_ids, num_experts, capacity)
            if result is not None:
                return result
        small_table = num_experts is not None and num_tokens * slots * (num_experts + 1) <= DENSE_QUEUE_TABLE
        if small_table and expert_ids.device.type != "cpu":
            dropped = position_in_queue_dense(expert_ids, num_experts) > capacity  # type: ignore[arg-type]
        else:  # without the expert count, a spare key above every expert id
            place = position_in_queue_sorted(expert_ids, num_experts if num_experts is not None else _NO_EXPERT - 2)
            dropped = (place > capacity) & (expert_ids >= 0)
        return expert_ids.masked_fill(dropped, -1), dropped
    valid = (expert_ids >= 0).reshape(-1)
    flat_ids = torch.where(valid, expert_ids.reshape(-1), _NO_EXPERT)
    by_probability = torch.argsort(-probs.reshape(-1).float(), stable=True)
    priority_rank = torch.empty_like(by_probability)
    priority_rank[by_probability] = torch.arange(by_probability.numel(), device=expert_ids.device)
    over = rank_within_expert(flat_ids, priority_rank, max(1, num_tokens * slots)) >= capacity
    dropped = (over & valid).view(num_tokens, slots)
    kept = expert_ids.masked_fill(dropped, -1)
    return kept, dropped
