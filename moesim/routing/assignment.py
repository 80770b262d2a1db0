"""`Assignment`: the result of routing one batch of tokens through one MoE layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class Assignment:
    """Which experts serve each token, with what weight.

    `expert_ids[t, j]` is the j-th expert of token t, or -1 when that slot is empty.
    A slot is empty either because capacity dropped it (`dropped[t, j]` is True: the rule
    chose an expert that was full, and the token passes through the residual connection)
    or because the rule chose nothing there by design (expert choice pads rows; GShard's
    second expert is kept at random; two-level gating sends a token to the dense path,
    marked in `dense_path`). Shared experts are not listed: every token uses all
    `num_shared_experts` of them.
    """

    expert_ids: torch.Tensor
    weights: torch.Tensor
    num_experts: int
    dropped: torch.Tensor
    capacity: Optional[int] = None
    num_shared_experts: int = 0
    dense_path: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.expert_ids.shape != self.weights.shape or self.expert_ids.shape != self.dropped.shape:
            raise ValueError(
                f"expert_ids {tuple(self.expert_ids.shape)}, weights {tuple(self.weights.shape)} and dropped "
                f"{tuple(self.dropped.shape)} must have the same [tokens, slots] shape"
            )

    @property
    def num_tokens(self) -> int:
        return int(self.expert_ids.shape[0])

    @property
    def served(self) -> torch.Tensor:
        """Boolean [tokens, slots]: slots that reach an expert."""
        return self.expert_ids >= 0

    def _served_or_spare(self) -> torch.Tensor:
        """expert_ids with empty slots pointing at a spare column `num_experts` (fixed shape, no wait for a GPU)."""
        return torch.where(self.served, self.expert_ids, self.num_experts)

    @property
    def expert_load(self) -> torch.Tensor:
        """Tokens each routed expert processes, [num_experts] (int64), on the assignment's device."""
        ids = self._served_or_spare().reshape(-1)
        counts = torch.zeros(self.num_experts + 1, dtype=torch.long, device=ids.device)
        return counts.scatter_add_(0, ids, torch.ones_like(ids))[: self.num_experts]

    @property
    def num_dropped(self) -> int:
        """Token-expert pairs the rule chose but capacity refused."""
        return int(self.dropped.sum())

    @property
    def num_requested(self) -> int:
        """Token-expert pairs the rule chose (served + dropped)."""
        return int(self.served.sum()) + self.num_dropped

    @property
    def tokens_without_expert(self) -> int:
        """Tokens that reach no routed expert (excluding those sent to the dense path by design)."""
        none = ~self.served.any(dim=1)
        if self.dense_path is not None:
            none &= ~self.dense_path
        return int(none.sum())

    def experts_per_token(self) -> torch.Tensor:
        """Routed experts each token reaches, [tokens]."""
        return self.served.sum(dim=1)

    def routing_map(self) -> torch.Tensor:
        """Boolean [tokens, num_experts]: token t is served by expert e (Megatron's routing_map)."""
        mask = torch.zeros(self.num_tokens, self.num_experts + 1, dtype=torch.bool, device=self.expert_ids.device)
        return mask.scatter_(1, self._served_or_spare(), True)[:, : self.num_experts]

    def to(self, device: torch.device | str) -> "Assignment":
        """The same assignment with its tensors on `device` (metrics read values: they work on a host copy)."""

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return Assignment(
            move(self.expert_ids),
            move(self.weights),
            self.num_experts,
            move(self.dropped),
            self.capacity,
            self.num_shared_experts,
            move(self.dense_path),
            {key: move(value) for key, value in self.info.items()},
        )

    def equals(self, other: "Assignment") -> bool:
        """Bit-for-bit equality of the routing result."""
        return (
            torch.equal(self.expert_ids, other.expert_ids)
            and torch.equal(self.weights, other.weights)
            and torch.equal(self.dropped, other.dropped)
        )
