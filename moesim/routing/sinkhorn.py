"""Sinkhorn balancing (S-BASE; Clark et al. 2022, Megatron-Core's `sinkhorn` router).

The approximate, fast alternative to BASE's exact assignment: exp(logits) is scaled by
alternating row and column normalisation until every expert's column sums to
tokens / num_experts (the balanced transport plan), then each token takes the top-k
experts of the balanced plan. The gate weights come from the original logits (sigmoid
for k = 1, softmax over experts otherwise, as Megatron-Core does), so balancing decides
where tokens go but not how much each expert's output counts. Capacity then applies as
for top-k.

The plan is found as Megatron-Core does, by scaling vectors: with K = exp(logits), rows
are scaled by d0 = 1 / (T K d1) and columns by d1 = 1 / (E K^T d0) in turn, in float32
(the logits' row maximum is taken out first, a row scaling the plan absorbs, so nothing
overflows), until Megatron-Core's stopping rule holds: the mean change of d1 in a round
below `tolerance` (4-6 rounds on realistic scores); the rows are then scaled once more,
so they are exact and the columns within the tolerance.

Where it runs: on a GPU with Triton, one fused kernel runs every round and tests the
stopping rule on the device (`moesim.routing.fused`); on the CPU, PyTorch's rounds with
the same rule; on a GPU without Triton, all `iterations` rounds in PyTorch (testing the
rule there would make the host wait for the device after every round, as Megatron-Core's
loop does).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from moesim.routing import fused
from moesim.routing.router import Choice, Router

_EPS = 1e-8
"""Added to every row and column mass (Megatron-Core's eps): an expert no token likes cannot divide by zero."""


def sinkhorn_plan(
    logits: torch.Tensor, iterations: int = 50, tolerance: float = 1e-4
) -> tuple[torch.Tensor, Union[int, torch.Tensor]]:
    """A [tokens, experts] transport plan with row sums 1/tokens and column sums 1/experts.

    Returns the plan (float32) and the rounds run (a 0-dim tensor on the device where the
    fused kernel ran: reading it is the caller's choice).
    """
    if fused.available(logits):
        result = fused.sinkhorn_plan_fused(logits, iterations, tolerance, _EPS)
        if result is not None:
            return result
    num_tokens, num_experts = logits.shape
    logits = logits.float()
    kernel = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    eps = torch.full((), _EPS, device=logits.device)  # made there: no copy from the host
    col_scale = torch.ones(num_experts, device=logits.device)
    check = logits.device.type == "cpu"
    used = 0
    for used in range(1, iterations + 1):  # rounds, not tokens
        row_scale = torch.addmv(eps, kernel, col_scale, alpha=num_tokens).reciprocal_()
        new_scale = torch.addmv(eps, kernel.t(), row_scale, alpha=num_experts).reciprocal_()
        settled = check and float((new_scale - col_scale).abs().mean()) < tolerance
        col_scale = new_scale
        if settled:
            break
    row_scale = torch.addmv(eps, kernel, col_scale, alpha=num_tokens).reciprocal_()
    return kernel * col_scale * row_scale.unsqueeze(1), used


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
        plan, used = sinkhorn_plan(logits, self.iterations, self.tolerance)
        balanced, expert_ids = torch.topk(plan, self.top_k, dim=-1)
        if self.top_k == 1:
            gates = torch.sigmoid(logits.gather(1, expert_ids))
        else:
            gates = torch.softmax(logits, dim=-1).gather(1, expert_ids)
        return Choice(expert_ids, gates, balanced, info={"sinkhorn_iterations": used})
