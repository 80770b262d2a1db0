"""The `Router` base class: scores in, `Assignment` out, capacity applied the same way for every rule.

A router is configured once (experts, k, capacity factor, rule options) and then maps
router logits `[tokens, num_experts]` to an `Assignment`. The same object serves the
simulator and the executor. Rules that draw random numbers (noisy top-k, GShard's
second expert) seed a fresh generator from `seed` on every call, so a call is a pure
function of its inputs; pass another seed to get other draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from moesim.routing.assignment import Assignment
from moesim.routing.capacity import apply_capacity, expert_capacity


@dataclass
class Choice:
    """What a rule chose before capacity: experts [tokens, slots] (-1 = none), weights, priority."""

    expert_ids: torch.Tensor
    weights: torch.Tensor
    priority: torch.Tensor
    dense_path: Optional[torch.Tensor] = None
    capacity: Optional[int] = None
    info: Optional[dict[str, Any]] = None
    capacity_done: bool = False
    dropped: Optional[torch.Tensor] = None


class Router:
    """Base of every routing rule; subclasses implement `choose`."""

    name: ClassVar[str] = "router"
    uses_capacity: ClassVar[bool] = True

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        drop_policy: str = "position",
        num_shared_experts: int = 0,
        seed: int = 0,
    ) -> None:
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None (dropless), got {capacity_factor}")
        if drop_policy not in ("position", "probability"):
            raise ValueError(f"drop_policy must be 'position' or 'probability', got {drop_policy!r}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.drop_policy = drop_policy
        self.num_shared_experts = num_shared_experts
        self.seed = seed

    # -- to implement -------------------------------------------------------------
    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        """The rule itself: which experts each token asks for, before capacity."""
        raise NotImplementedError

    expected_columns_offset: ClassVar[int] = 0
    """Extra score columns a rule expects beyond num_experts (two-level gating's first gate)."""

    # -- shared machinery ----------------------------------------------------------
    def capacity_for(self, num_tokens: int) -> Optional[int]:
        """Slots per expert for a batch of `num_tokens` tokens (None = dropless)."""
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def generator(self) -> torch.Generator:
        """A fresh generator seeded from `seed` and the rule's name (same seed, same draws).

        The name is mixed in so that a router seeded like the data (seed 0 for both) does
        not draw the very numbers the scores were made of.
        """
        # torch's CPU generator keeps only 32 bits of a seed, so mix name and seed into 32 bits
        mixed = np.random.SeedSequence([zlib.crc32(self.name.encode()), self.seed]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(mixed))

    def route(self, scores: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> Assignment:
        """Route a batch: `scores` are router logits [tokens, num_experts]."""
        logits = self._check_scores(scores)
        if token_ids is not None:
            token_ids = torch.as_tensor(token_ids).reshape(-1)
            if token_ids.numel() != logits.shape[0]:
                raise ValueError(f"token_ids has {token_ids.numel()} entries for {logits.shape[0]} tokens")
        choice = self.choose(logits, token_ids)
        capacity = choice.capacity
        if choice.capacity_done:
            kept = choice.expert_ids
            dropped = choice.dropped if choice.dropped is not None else torch.zeros_like(kept, dtype=torch.bool)
        else:
            capacity = self.capacity_for(logits.shape[0]) if self.uses_capacity else None
            kept, dropped = apply_capacity(choice.expert_ids, choice.priority, capacity, self.drop_policy)
        weights = choice.weights.masked_fill(kept < 0, 0.0)
        return Assignment(
            expert_ids=kept,
            weights=weights,
            num_experts=self.num_experts,
            dropped=dropped,
            capacity=capacity,
            num_shared_experts=self.num_shared_experts,
            dense_path=choice.dense_path,
            info=choice.info or {},
        )

    def _check_scores(self, scores: torch.Tensor) -> torch.Tensor:
        scores = torch.as_tensor(scores)
        columns = self.num_experts + self.expected_columns_offset
        if scores.dim() != 2 or scores.shape[1] != columns:
            raise ValueError(
                f"{self.name}: scores must be [tokens, {columns}] router logits, got {tuple(scores.shape)}"
            )
        if not scores.is_floating_point():
            raise ValueError(f"{self.name}: scores must be floating point, got {scores.dtype}")
        # one sum is a cheap screen (NaN and inf propagate); look closer only if it is not finite
        if scores.numel() and not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
            raise ValueError(f"{self.name}: scores contain NaN or infinity")
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, drop_policy={self.drop_policy!r})"
        )


def scores_to_probs(logits: torch.Tensor, score_function: str) -> torch.Tensor:
    """Router logits to affinities: softmax over experts, or an independent sigmoid per expert."""
    if score_function == "softmax":
        return torch.softmax(logits, dim=-1)
    if score_function == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score_function must be 'softmax' or 'sigmoid', got {score_function!r}")


def group_slots(group_ids: torch.Tensor, members: torch.Tensor, values: torch.Tensor, num_groups: int, fill: float = 0.0):
    """Lay out (group, member, value) triples as [num_groups, max_per_group] rows, -1 padded.

    Used to turn per-expert picks (expert choice, BASE) into per-token slots without a
    Python loop: sort by group, rank within group, scatter.
    """
    count = group_ids.numel()
    order = torch.argsort(group_ids.long() * max(1, count) + torch.arange(count), stable=True)
    sorted_groups = group_ids[order]
    counts = torch.bincount(sorted_groups, minlength=num_groups)
    width = int(counts.max()) if count else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(count) - starts[sorted_groups]
    ids = torch.full((num_groups, max(width, 1)), -1, dtype=torch.long)
    vals = torch.full((num_groups, max(width, 1)), fill, dtype=values.dtype)
    ids[sorted_groups, slot] = members[order].long()
    vals[sorted_groups, slot] = values[order]
    return ids, vals
