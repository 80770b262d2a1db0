"""Two-level gating: a first gate, then experts.

* `mode="groups"` — hierarchical MoE (Shazeer et al. 2017, section B): a first gate
  picks the best `topk_groups` of `num_expert_groups` expert groups (group logit =
  logsumexp of its experts' logits, i.e. the group's softmax mass), a second gate picks
  the top-k experts inside them; the weight of an expert is
  P(group) x P(expert | group).
* `mode="dense_or_experts"` — conditional MoE (NLLB Team 2022, section 6.2.2): the
  scores carry one extra first column, the logit of a binary gate g = sigmoid(.). Tokens
  with g < `dense_threshold` take the dense FFN path (marked in
  `Assignment.dense_path`, not counted as dropped); the rest are routed top-k with
  weights multiplied by g.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.group_limited import _check_groups
from moesim.routing.router import Choice, Router


class TwoLevelRouter(Router):
    """A first gate (dense-vs-experts or expert group), then top-k experts."""

    name = "two_level"
    leaves_empty_slots = True

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        mode: str = "groups",
        num_expert_groups: int = 1,
        topk_groups: int = 1,
        dense_threshold: float = 0.5,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        if mode not in ("groups", "dense_or_experts"):
            raise ValueError(f"mode must be 'groups' or 'dense_or_experts', got {mode!r}")
        if mode == "groups":
            _check_groups(num_experts, top_k, num_expert_groups, topk_groups)
        self.mode = mode
        self.num_expert_groups = num_expert_groups
        self.topk_groups = topk_groups
        self.dense_threshold = dense_threshold
        self.expected_columns_offset = 1 if mode == "dense_or_experts" else 0  # type: ignore[misc]

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        if self.mode == "dense_or_experts":
            gate = torch.sigmoid(logits[:, 0])
            expert_logits = logits[:, 1:]
            weights, expert_ids = torch.topk(torch.softmax(expert_logits, dim=-1), self.top_k, dim=-1)
            dense = gate < self.dense_threshold
            expert_ids = expert_ids.masked_fill(dense.unsqueeze(1), -1)
            weights = weights * gate.unsqueeze(1)
            # a 0-dim tensor on the scores' device: reading it is the caller's choice (int() waits for a GPU)
            return Choice(expert_ids, weights, weights, dense_path=dense, info={"dense_tokens": dense.sum()})
        num_tokens = logits.shape[0]
        grouped = logits.view(num_tokens, self.num_expert_groups, self.num_experts // self.num_expert_groups)
        group_probs = torch.softmax(torch.logsumexp(grouped, dim=-1), dim=-1)
        best_groups = torch.topk(group_probs, self.topk_groups, dim=-1).indices
        within = torch.softmax(grouped, dim=-1) * group_probs.unsqueeze(-1)
        allowed = torch.zeros(num_tokens, self.num_expert_groups, dtype=torch.bool, device=logits.device)
        allowed.scatter_(1, best_groups, True)
        candidate = within.masked_fill(~allowed.unsqueeze(-1), -1.0).reshape(num_tokens, self.num_experts)
        weights, expert_ids = torch.topk(candidate, self.top_k, dim=-1)
        return Choice(expert_ids, weights, weights)
