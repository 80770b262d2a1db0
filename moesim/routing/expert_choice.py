"""Expert choice routing (Zhou et al. 2022): each expert takes its top-c tokens.

c = ceil(capacity_factor x tokens x top_k / num_experts) (the paper's k = n x c / e with
`top_k` as the average experts per token), so every expert is exactly full and nothing
is dropped; a token may get several experts or none (reported as
`tokens_without_expert`). `capacity_factor=None` means 1.0. Weights are the softmax
(or sigmoid) probabilities of the chosen token-expert pairs.

A token's slots are as many as the experts that took it. On the CPU the slot width is
the largest such count in the batch, the taken experts first; off the CPU it is
`num_experts`, slot e holding expert e or -1 (any token could be taken by every expert,
and finding the largest count would make the host wait for the device): a mask
scattered from the experts' picks, with no sort. Both give the same served pairs and
weights.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.capacity import expert_capacity
from moesim.routing.router import Choice, Router, check_score_function, group_slots, scores_to_probs


class ExpertChoiceRouter(Router):
    """Experts choose tokens; perfectly balanced by construction."""

    name = "expert_choice"
    leaves_empty_slots = True

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        score_function: str = "softmax",
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        check_score_function(score_function)
        self.score_function = score_function

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        num_tokens, device = logits.shape[0], logits.device
        per_expert = expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor or 1.0)
        probs = scores_to_probs(logits, self.score_function)
        if num_tokens == 0:
            empty = torch.zeros(0, 1, dtype=torch.long, device=device)
            return Choice(empty - 1, empty.float(), empty.float(), capacity=0, capacity_done=True)
        # each expert's picks, in no particular order (the order is not used: no sort)
        gate, token_index = torch.topk(probs.t(), per_expert, dim=-1, sorted=False)  # [experts, c]
        if device.type == "cpu":
            experts = torch.arange(self.num_experts, device=device).unsqueeze(1).expand_as(token_index)
            expert_ids, weights = group_slots(
                token_index.reshape(-1), experts.reshape(-1), gate.reshape(-1), num_tokens
            )
        else:
            expert_ids, weights = slots_by_expert(probs, token_index)
        return Choice(expert_ids, weights, weights, capacity=per_expert, capacity_done=True)


def slots_by_expert(probs: torch.Tensor, token_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[tokens, experts] slots from each expert's picked tokens ([experts, c]): slot e holds e or -1.

    The weights are the probabilities of the taken pairs, 0 elsewhere.
    """
    num_tokens, num_experts = probs.shape
    taken = torch.zeros(num_experts, num_tokens, dtype=torch.bool, device=probs.device)
    taken = taken.scatter_(1, token_index, True).t()
    expert_ids = torch.where(taken, torch.arange(num_experts, device=probs.device), -1)
    return expert_ids, torch.where(taken, probs, 0.0)
