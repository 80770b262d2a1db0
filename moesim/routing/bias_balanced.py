"""DeepSeek-V3 auxiliary-loss-free load balancing (DeepSeek-V3 report, section 2.1.2).

Affinities are sigmoid(logits). A per-expert bias is added to them only to *choose*
experts (node-limited: groups ranked by the sum of their two best biased scores, the
best `topk_groups` kept, then the top-k biased scores inside them); the weights are the
unbiased affinities of the chosen experts, normalised to sum to 1 and multiplied by
`routed_scaling_factor`. After each step the bias moves against the load:
`bias += gamma x sign(mean_load - load)`, once per global batch, from loads summed over
the data-parallel ranks (`update_bias` takes one load vector per rank).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from moesim.routing.group_limited import _check_groups, topk_within_groups
from moesim.routing.router import Choice, Router


class BiasBalancedRouter(Router):
    """Sigmoid affinities, a balancing bias for the choice only, normalised weights."""

    name = "bias_balanced"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        num_expert_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        bias_update_rate: float = 0.001,
        routed_scaling_factor: float = 1.0,
        bias: Optional[Sequence[float]] = None,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        self.num_expert_groups = num_expert_groups or 1
        self.topk_groups = topk_groups or self.num_expert_groups
        _check_groups(num_experts, top_k, self.num_expert_groups, self.topk_groups)
        if bias_update_rate < 0:
            raise ValueError(f"bias_update_rate must be >= 0, got {bias_update_rate}")
        self.bias_update_rate = bias_update_rate
        self.routed_scaling_factor = routed_scaling_factor
        self.bias = torch.zeros(num_experts) if bias is None else torch.as_tensor(bias, dtype=torch.float32).clone()
        if self.bias.shape != (num_experts,):
            raise ValueError(f"bias must have {num_experts} entries, got {tuple(self.bias.shape)}")

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        affinity = torch.sigmoid(logits)
        biased = affinity + self.bias.to(affinity.dtype)
        _, expert_ids = topk_within_groups(biased, self.top_k, self.num_expert_groups, self.topk_groups, "top2_sum")
        chosen = affinity.gather(1, expert_ids)
        weights = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(1e-20) * self.routed_scaling_factor
        return Choice(expert_ids, weights, chosen)

    def update_bias(self, expert_loads: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """One update from this global batch: loads [num_experts] or one vector per DP rank."""
        loads = torch.as_tensor(torch.stack(list(expert_loads)) if isinstance(expert_loads, (list, tuple)) else expert_loads)
        loads = loads.double()
        if loads.dim() == 2:
            loads = loads.sum(dim=0)  # the all-reduce over data-parallel ranks
        if loads.shape != (self.num_experts,):
            raise ValueError(f"expert_loads must have {self.num_experts} entries per rank, got {tuple(loads.shape)}")
        step = self.bias_update_rate * torch.sign(loads.mean() - loads)
        self.bias = self.bias + step.float()
        return self.bias
