"""Forced balance: every expert gets the same number of tokens, whatever the scores say.

Vendor benchmarks of MoE training (Megatron-Core's `--moe-router-force-load-balancing`,
used in NVIDIA's published MoE throughput) take the router out of the measurement:
Megatron replaces the logits by random values, so each expert's load is balanced in
expectation. `balanced` makes it exact and deterministic: slot j of token t goes to
expert (t x k + j) mod E, so loads differ by at most one token and a token's k experts
are distinct (k <= E). The scores are not used (only their shape), and every slot has
weight 1 / k. It runs on the scores' device with no host synchronisation.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.router import Choice, Router


class ForcedBalanceRouter(Router):
    """Round-robin over the experts: an exactly balanced load, for throughput benchmarks."""

    name = "balanced"

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        tokens = logits.shape[0]
        slots = torch.arange(tokens * self.top_k, device=logits.device).reshape(tokens, self.top_k)
        expert_ids = torch.remainder(slots, self.num_experts)
        weights = torch.full(expert_ids.shape, 1.0 / self.top_k, device=logits.device)
        return Choice(expert_ids, weights, weights)
