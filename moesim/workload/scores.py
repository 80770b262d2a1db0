"""`RouterScores`: the router logits of one MoE layer for one batch, with token ids and source ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RouterScores:
    """Router logits `[tokens, num_experts]`, the token ids, and the rank each token starts on."""

    logits: torch.Tensor
    token_ids: torch.Tensor
    source_rank: torch.Tensor
    layer: int = 0

    def __post_init__(self) -> None:
        if self.logits.dim() != 2:
            raise ValueError(f"logits must be [tokens, experts], got shape {tuple(self.logits.shape)}")
        tokens = self.logits.shape[0]
        if self.token_ids.shape != (tokens,) or self.source_rank.shape != (tokens,):
            raise ValueError(
                f"token_ids {tuple(self.token_ids.shape)} and source_rank {tuple(self.source_rank.shape)} "
                f"must both be [{tokens}]"
            )

    @property
    def num_tokens(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.logits.shape[1])
