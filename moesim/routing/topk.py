"""Token-choice top-k routing and its classic variants.

* `top_k` — softmax then top-k (Switch, GShard, OLMoE; weights are the softmax
  probabilities; `normalize_weights` renormalises them over the chosen k as Mixtral,
  Qwen3 and DBRX do), or top-k then softmax over the chosen logits
  (`softmax_order="after_topk"`, the same weights as softmax, top-k, renormalise);
  sigmoid scores are available too.
* `noisy_top_k` — Shazeer et al. 2017: Gaussian noise scaled by `noise_std` is added to
  the logits before the choice; weights are the softmax over the chosen noisy logits.
* `gshard_top2` — Lepikhin et al. 2020: the first expert always, the second kept with
  probability min(1, 2 x g2) where g1 + g2 = 1 are the two renormalised gates.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.router import Choice, Router, check_score_function, scores_to_probs


class TopKRouter(Router):
    """Each token picks its k highest-scoring experts."""

    name = "top_k"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        score_function: str = "softmax",
        softmax_order: str = "before_topk",
        noise_std: float = 0.0,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        if softmax_order not in ("before_topk", "after_topk"):
            raise ValueError(f"softmax_order must be 'before_topk' or 'after_topk', got {softmax_order!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        check_score_function(score_function)
        self.score_function = score_function
        self.softmax_order = softmax_order
        self.noise_std = noise_std

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        if self.noise_std > 0:
            noise = torch.randn(
                logits.shape, generator=self.generator(logits.device), dtype=logits.dtype, device=logits.device
            )
            logits = noise.mul_(self.noise_std).add_(logits)
        if self.softmax_order == "after_topk" and self.score_function == "softmax":
            top_logits, expert_ids = torch.topk(logits, self.top_k, dim=-1)
            weights = torch.softmax(top_logits, dim=-1)
        else:
            probs = scores_to_probs(logits, self.score_function)
            weights, expert_ids = torch.topk(probs, self.top_k, dim=-1)
        return Choice(expert_ids=expert_ids, weights=weights, priority=weights)


class NoisyTopKRouter(TopKRouter):
    """Top-k over noisy logits, softmax over the chosen (Shazeer et al. 2017)."""

    name = "noisy_top_k"

    def __init__(self, num_experts: int, top_k: int = 1, noise_std: float = 1.0, **options: object) -> None:
        options.setdefault("softmax_order", "after_topk")
        super().__init__(num_experts, top_k, noise_std=noise_std, **options)  # type: ignore[arg-type]


class GShardTop2Router(Router):
    """GShard's top-2: the second expert is dispatched only with probability 2 x g2."""

    name = "gshard_top2"
    leaves_empty_slots = True

    def __init__(self, num_experts: int, top_k: int = 2, **options: object) -> None:
        if top_k != 2:
            raise ValueError(f"gshard_top2 routes to exactly 2 experts; got top_k={top_k}")
        super().__init__(num_experts, 2, **options)  # type: ignore[arg-type]

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        probs = torch.softmax(logits, dim=-1)
        top, expert_ids = torch.topk(probs, 2, dim=-1)
        gates = top / top.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        draws = torch.rand(
            logits.shape[0], generator=self.generator(logits.device), dtype=gates.dtype, device=logits.device
        )
        keep_second = draws < 2.0 * gates[:, 1]
        expert_ids = expert_ids.clone()
        expert_ids[:, 1] = torch.where(keep_second, expert_ids[:, 1], torch.full_like(expert_ids[:, 1], -1))
        # a 0-dim tensor on the scores' device: reading it is the caller's choice (int() waits for a GPU)
        return Choice(expert_ids=expert_ids, weights=gates, priority=gates, info={"second_kept": keep_second.sum()})
