"""Expert choice routing (Zhou et al. 2022): each expert takes its top-c tokens.

c = ceil(capacity_factor x tokens x top_k / num_experts) (the paper's k = n x c / e with
`top_k` as the average experts per token), so every expert is exactly full and nothing
is dropped; a token may get several experts or none (reported as
`tokens_without_expert`). `capacity_factor=None` means 1.0. Weights are the softmax
probabilities of the chosen token-expert pairs.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.capacity import expert_capacity
from moesim.routing.router import Choice, Router, group_slots


class ExpertChoiceRouter(Router):
    """Experts choose tokens; perfectly balanced by construction."""

    name = "expert_choice"

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        num_tokens = logits.shape[0]
        per_expert = expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor or 1.0)
        probs = torch.softmax(logits, dim=-1)
        if num_tokens == 0:
            empty = torch.zeros(0, 1, dtype=torch.long)
            return Choice(empty - 1, empty.float(), empty.float(), capacity=0, capacity_done=True)
        gate, token_index = torch.topk(probs.t(), per_expert, dim=-1)  # [experts, c]
        experts = torch.arange(self.num_experts).unsqueeze(1).expand_as(token_index)
        expert_ids, weights = group_slots(token_index.reshape(-1), experts.reshape(-1), gate.reshape(-1), num_tokens)
        return Choice(expert_ids, weights, weights, capacity=per_expert, capacity_done=True)
