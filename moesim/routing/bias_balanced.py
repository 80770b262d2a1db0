"""DeepSeek-V3 auxiliary-loss-free load balancing (DeepSeek-V3 report, section 2.1.2).

Affinities are sigmoid(logits). A per-expert bias (the `e_score_correction_bias` of the
published checkpoints) is added to them only to *choose* experts (node-limited: groups
ranked by the sum of their two best biased scores, the best `topk_groups` kept, then the
top-k biased scores inside them); the weights are the unbiased affinities of the chosen
experts, normalised to sum to 1 and multiplied by `routed_scaling_factor` (both applied
by `Router`, on by default here as in DeepSeek-V3). After each step the bias moves
against the load: `bias += gamma x sign(mean_load - load)`, once per global batch, from
loads summed over the data-parallel ranks (`update_bias` takes one load vector per rank).

With a zero bias the rule is exactly `group_limited` with the same settings. Megatron-Core
allows the bias with softmax scores too (`moe_router_enable_expert_bias`), so the score
function is an option. The bias lives on the device of the scores it last routed.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from moesim.routing.group_limited import GroupLimitedRouter, topk_within_groups
from moesim.routing.router import Choice, as_tensor_here, scores_to_probs


class BiasBalancedRouter(GroupLimitedRouter):
    """Affinities, a balancing bias for the choice only, normalised weights."""

    name = "bias_balanced"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        num_expert_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        bias_update_rate: float = 0.001,
        bias: Optional[Sequence[float]] = None,
        score_function: str = "sigmoid",
        group_score: str = "top2_sum",
        normalize_weights: bool = True,
        **options: object,
    ) -> None:
        groups = num_expert_groups or 1
        super().__init__(
            num_experts,
            top_k,
            capacity_factor,
            num_expert_groups=groups,
            topk_groups=topk_groups or groups,
            group_score=group_score,
            score_function=score_function,
            normalize_weights=normalize_weights,
            **options,
        )
        if bias_update_rate < 0:
            raise ValueError(f"bias_update_rate must be >= 0, got {bias_update_rate}")
        self.bias_update_rate = bias_update_rate
        initial = (
            torch.zeros(num_experts, device="cpu")
            if bias is None
            else torch.as_tensor(bias, dtype=torch.float32, device="cpu")
        )
        self.bias = initial.clone()
        if self.bias.shape != (num_experts,):
            raise ValueError(f"bias must have {num_experts} entries, got {tuple(self.bias.shape)}")

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        affinity = scores_to_probs(logits, self.score_function)
        if self.bias.device != affinity.device:
            self.bias = self.bias.to(affinity.device)  # once: it stays where the scores are
        biased = affinity + self.bias.to(affinity.dtype)
        _, expert_ids = topk_within_groups(
            biased, self.top_k, self.num_expert_groups, self.topk_groups, self.group_score
        )
        chosen = affinity.gather(1, expert_ids)
        return Choice(expert_ids, chosen, chosen)

    def update_bias(self, expert_loads: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """One update from this global batch: loads [num_experts] or one vector per DP rank."""
        loads = as_tensor_here(
            torch.stack(list(expert_loads)) if isinstance(expert_loads, (list, tuple)) else expert_loads
        )
        loads = loads.to(self.bias.device).double()
        if loads.dim() == 2:
            loads = loads.sum(dim=0)  # the all-reduce over data-parallel ranks
        if loads.shape != (self.num_experts,):
            raise ValueError(f"expert_loads must have {self.num_experts} entries per rank, got {tuple(loads.shape)}")
        step = self.bias_update_rate * torch.sign(loads.mean() - loads)
        self.bias = self.bias + step.float()
        return self.bias
