"""`Placement`: which expert-parallel rank holds each routed expert."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """Contiguous placement: rank r holds experts [r x E/ep, (r+1) x E/ep), as Megatron-Core and DeepSpeed do."""

    num_experts: int
    ep_size: int
    gpus_per_node: int = 8

    def __post_init__(self) -> None:
        if self.ep_size < 1 or self.num_experts % self.ep_size:
            raise ValueError(f"num_experts ({self.num_experts}) must be divisible by ep_size ({self.ep_size})")

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep_size

    @property
    def expert_rank(self) -> torch.Tensor:
        """Rank of each expert, [num_experts]."""
        return torch.arange(self.num_experts) // self.experts_per_rank

    @property
    def num_nodes(self) -> int:
        """Nodes the expert-parallel group spans."""
        return -(-self.ep_size // self.gpus_per_node)
