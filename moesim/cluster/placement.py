"""`Placement`: which expert-parallel rank holds each routed expert, and replicas of hot experts.

Without replicas the placement is contiguous: rank r holds experts
[r x E/ep, (r+1) x E/ep), as Megatron-Core and DeepSpeed do (rounded, when ep does not
divide E and redundant copies fill the ranks up). With `redundant_slots`
(DeepSeek-V3's redundant experts for inference), experts are placed as DeepSeek's EPLB
places them (its `eplb.py`, global policy): each extra slot goes to the expert with the
highest load per copy, then every copy, heaviest first, goes to the least loaded rank
that still has a free slot, so every rank holds the same number of copies (one more on
some when ep does not divide them); tokens of a replicated expert are split evenly over
its copies, each (token, expert) pair to one copy (`slot_ranks`), so that a token bound for
two experts on one rank or node is still sent there once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Placement:
    """Experts on ranks; `share[e, r]` is the fraction of expert e's tokens that rank r serves."""

    num_experts: int
    ep_size: int
    gpus_per_node: int = 8
    share: Optional[np.ndarray] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.ep_size < 1 or self.ep_size > self.num_experts:
            raise ValueError(f"ep_size ({self.ep_size}) must be between 1 and num_experts ({self.num_experts})")

    @property
    def experts_per_rank(self) -> int:
        """Home experts of a rank; every rank holds as many only when ep_size divides num_experts."""
        if self.num_experts % self.ep_size:
            raise ValueError(f"num_experts ({self.num_experts}) is not divisible by ep_size ({self.ep_size})")
        return self.num_experts // self.ep_size

    @property
    def expert_rank(self) -> torch.Tensor:
        """Home rank of each expert, [num_experts]: contiguous, ranks differing by at most one expert when ep_size
        does not divide num_experts (redundant copies then even them out, as DeepSeek's 256 + 32 over 144)."""
        return torch.arange(self.num_experts) * self.ep_size // self.num_experts

    @property
    def num_nodes(self) -> int:
        """Nodes the expert-parallel group spans."""
        return -(-self.ep_size // self.gpus_per_node)

    def shares(self) -> np.ndarray:
        """[num_experts, ep_size] share of each expert's tokens served by each rank (rows sum to 1)."""
        if self.share is not None:
            return self.share
        home = np.zeros((self.num_experts, self.ep_size))
        home[np.arange(self.num_experts), self.expert_rank.numpy()] = 1.0
        return home

    def slot_ranks(self, expert_ids: torch.Tensor) -> torch.Tensor:
        """The rank serving each (token, slot) of `expert_ids` [tokens, k] (-1 slots give any rank; mask them):
        an expert's home rank, or for a replicated expert one of its copies, drawn slot by slot in proportion to
        the copies' shares by a fixed low-discrepancy sequence (the same tokens always reach the same copies)."""
        share = self.shares()
        ids = expert_ids.clamp(min=0).numpy()
        ranks = share.argmax(axis=1)[ids]
        replicated = np.flatnonzero((share > 0).sum(axis=1) > 1)
        if replicated.size:
            tokens = np.arange(ids.shape[0])[:, None]
            slots = np.arange(ids.shape[1])[None, :]
            draw = np.modf(tokens * 0.6180339887498949 + slots * 0.7548776662466927)[0]
            for expert in replicated:  # the replicated experts (redundant slots), not tokens
                chosen = ids == expert
                cumulative = np.cumsum(share[expert])
                ranks[chosen] = np.minimum(np.searchsorted(cumulative, draw[chosen], side="right"), self.ep_size - 1)
        return torch.from_numpy(np.ascontiguousarray(ranks))

    @property
    def copies_per_rank(self) -> np.ndarray:
        """Expert copies (weights) each rank holds."""
        return (self.shares() > 0).sum(axis=0)

    def with_hot_replicas(self, expert_load: np.ndarray, redundant_slots: int) -> "Placement":
        """EPLB's placement with `redundant_slots` extra copies of the hottest experts (see the module docstring);
        a rank never holds two copies of one expert, and an expert has at most one copy a rank."""
        load = np.asarray(expert_load, dtype=float)
        copies = np.ones(self.num_experts, dtype=int)
        for _ in range(redundant_slots):  # slots, not tokens
            per_copy = np.where(copies < self.ep_size, load / copies, -np.inf)
            if not np.isfinite(per_copy).any():
                break
            copies[int(np.argmax(per_copy))] += 1
        total = int(copies.sum())
        free = np.full(self.ep_size, total // self.ep_size)
        free[: total % self.ep_size] += 1
        rank_load = np.zeros(self.ep_size)
        holders: list[list[int]] = [[] for _ in range(self.num_experts)]
        weights = np.repeat(load / copies, copies)
        owners = np.repeat(np.arange(self.num_experts), copies)
        for index in np.argsort(-weights, kind="stable"):  # copies, heaviest first
            expert = int(owners[index])
            open_ranks = free > 0
            open_ranks[holders[expert]] = False
            if not open_ranks.any():  # only ranks that hold it have room: give them the copy's share
                open_ranks = free > 0
            rank = int(np.argmin(np.where(open_ranks, rank_load, np.inf)))
            free[rank] -= 1
            rank_load[rank] += weights[index]
            if rank not in holders[expert]:
                holders[expert].append(rank)
        share = np.zeros((self.num_experts, self.ep_size))
        for expert, ranks in enumerate(holders):
            share[expert, ranks] = 1.0 / len(ranks)
        return Placement(self.num_experts, self.ep_size, self.gpus_per_node, share)
