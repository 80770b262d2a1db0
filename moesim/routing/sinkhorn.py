"""Sinkhorn balancing (S-BASE; Clark et al. 2022, Megatron-Core's `sinkhorn` router).

The approximate, fast alternative to BASE's exact assignment: exp(logits) is scaled by
alternating row and column normalisation until every expert's column sums to
tokens / num_experts (the balanced transport plan), then each token takes the top-k
experts of the balanced plan. The gate weights come from the original logits (sigmoid
for k = 1, softmax over experts otherwise, as Megatron-Core does), so balancing decides
where tokens go but not how much each expert's output counts. Capacity then applies as
for top-k.

On the CPU the iterations stop once the rows are within `tolerance` of balance; on a GPU
all `iterations` run, because testing the tolerance would make the host wait for the
device after every iteration (Megatron-Core's loop waits so).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from moesim.routing.router import Choice, Router


def sinkhorn_plan(logits: torch.Tensor, iterations: int = 50, tolerance: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Log-domain Sinkhorn: a [tokens, experts] plan with uniform row and column sums.

    Returns the log of the plan (ranks are what matter) and the iterations used. The
    early stop applies to CPU logits only (see the module docstring).
    """
    num_tokens, num_experts = logits.shape
    log_plan = logits.double()
    row_target = -math.log(num_tokens)
    col_target = -math.log(num_experts)
    check = logits.device.type == "cpu"
    used = 0
    for used in range(1, iterations + 1):  # iterations, not tokens
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) + row_target
        column_sums = torch.logsumexp(log_plan, dim=0, keepdim=True)
        log_plan = log_plan - column_sums + col_target
        # after the column step columns are exact; check how far rows have drifted
        if check and float((torch.logsumexp(log_plan, dim=1) - row_target).abs().max()) < tolerance:
            break
    return log_plan, used


class SinkhornRouter(Router):
    """Top-k over a Sinkhorn-balanced plan."""

    name = "sinkhorn"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        iterations: int = 50,
        tolerance: float = 1e-4,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.tolerance = tolerance

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        if logits.shape[0] == 0:
            empty = torch.zeros(0, self.top_k, dtype=torch.long, device=logits.device)
            return Choice(empty, empty.float(), empty.float())
        log_plan, used = sinkhorn_plan(logits, self.iterations, self.tolerance)
        _, expert_ids = torch.topk(log_plan, self.top_k, dim=-1)
        if self.top_k == 1:
            gates = torch.sigmoid(logits.gather(1, expert_ids))
        else:
            gates = torch.softmax(logits, dim=-1).gather(1, expert_ids)
        return Choice(expert_ids, gates, log_plan.gather(1, expert_ids).float(), info={"sinkhorn_iterations": used})
