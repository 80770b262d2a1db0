"""BASE layers (Lewis et al. 2021): a balanced assignment that maximises total affinity.

Every token gets exactly `top_k` distinct experts and every expert takes at most
`ceil(tokens x top_k / num_experts)` of them (exactly that many when it divides), and
among all such assignments the one with the largest sum of router logits is chosen. It
is solved exactly as a min-cost flow with OR-Tools (source -> token -> expert -> sink);
costs are the logits scaled to integers, so the optimum is exact up to 1e-7 of the
largest |logit| per assignment.

`candidates=m` keeps only each token's m best experts as arcs (a much smaller graph);
when that cannot balance the batch, m is doubled until it can. With
`compare_exact=True` the exact problem is solved too and `info["gap_to_exact"]` gives
the relative loss in total affinity. A capacity factor above 1 loosens the balance;
below 1 some tokens cannot be served and are marked dropped.

The gate weight of an assigned expert is sigmoid(logit), as in the paper.

The solver runs on the host by nature: GPU scores are copied to the CPU for it (the host
waits for them) and the assignment is copied back to the scores' device.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from moesim.routing.capacity import expert_capacity
from moesim.routing.router import Choice, Router, group_slots

_COST_RESOLUTION = 10_000_000  # integer cost units for the largest |logit|


def balanced_assignment(
    logits: np.ndarray, per_token: int, capacity: int, candidates: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Solve the assignment; returns (token, expert) index arrays of the chosen pairs and optimality.

    Maximises the summed logits subject to each token taking at most `per_token` distinct
    experts and each expert at most `capacity` tokens, serving as many pairs as possible.
    """
    from ortools.graph.python import min_cost_flow  # heavy (~0.3 s): only when BASE routing runs

    num_tokens, num_experts = logits.shape
    if candidates is not None and candidates < num_experts:
        cand = np.argpartition(-logits, candidates - 1, axis=1)[:, :candidates]
    else:
        cand = np.broadcast_to(np.arange(num_experts), (num_tokens, num_experts))
    width = cand.shape[1]
    scale = _COST_RESOLUTION / max(float(np.abs(logits).max()), 1e-12)
    source, sink = 0, num_tokens + num_experts + 1
    token_nodes = np.arange(1, num_tokens + 1)
    expert_nodes = num_tokens + 1 + np.arange(num_experts)

    tails = np.concatenate([np.zeros(num_tokens, np.int64), np.repeat(token_nodes, width), expert_nodes])
    heads = np.concatenate([token_nodes, (num_tokens + 1 + cand).reshape(-1), np.full(num_experts, sink)])
    caps = np.concatenate(
        [np.full(num_tokens, per_token), np.ones(num_tokens * width, np.int64), np.full(num_experts, capacity)]
    )
    pair_cost = -np.rint(np.take_along_axis(logits, cand, axis=1) * scale).astype(np.int64)
    costs = np.concatenate([np.zeros(num_tokens, np.int64), pair_cost.reshape(-1), np.zeros(num_experts, np.int64)])

    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    demand = num_tokens * per_token
    flow.set_node_supply(source, demand)
    flow.set_node_supply(sink, -demand)
    status = flow.solve_max_flow_with_min_cost()
    if status != flow.OPTIMAL:
        raise RuntimeError(f"OR-Tools min-cost flow failed with status {status}")
    pair_arcs = np.arange(num_tokens, num_tokens + num_tokens * width)
    used = flow.flows(pair_arcs) > 0
    tokens = np.repeat(np.arange(num_tokens), width)[used]
    experts = cand.reshape(-1)[used]
    return tokens, experts, int(used.sum()) == min(num_tokens * per_token, num_experts * capacity)


class BaseRouter(Router):
    """Balanced assignment with the largest total token-expert affinity."""

    name = "base"
    leaves_empty_slots = True

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        candidates: Optional[int] = None,
        compare_exact: bool = False,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, capacity_factor, **options)  # type: ignore[arg-type]
        if candidates is not None and not top_k <= candidates:
            raise ValueError(f"candidates must be >= top_k ({top_k}), got {candidates}")
        self.candidates = candidates
        self.compare_exact = compare_exact

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        num_tokens, device = logits.shape[0], logits.device
        capacity = expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor or 1.0) or 0
        host_logits = logits.detach().cpu()  # the solver's side of the move (see the module docstring)
        values = host_logits.double().numpy()
        if num_tokens == 0:
            empty = torch.zeros(0, self.top_k, dtype=torch.long, device=device)
            return Choice(empty - 1, empty.float(), empty.float(), capacity=capacity, capacity_done=True)
        info: dict[str, object] = {}
        candidates = self.candidates
        while True:
            tokens, experts, complete = balanced_assignment(values, self.top_k, capacity, candidates)
            if complete or candidates is None or candidates >= self.num_experts:
                break
            candidates = min(2 * candidates, self.num_experts)
        info["candidates_used"] = candidates or self.num_experts
        affinity = float(values[tokens, experts].sum())
        info["total_affinity"] = affinity
        if self.compare_exact and candidates is not None and candidates < self.num_experts:
            exact_tokens, exact_experts, _ = balanced_assignment(values, self.top_k, capacity, None)
            exact = float(values[exact_tokens, exact_experts].sum())
            info["exact_affinity"] = exact
            info["gap_to_exact"] = (exact - affinity) / max(abs(exact), 1e-12)
        tokens_t = torch.from_numpy(tokens)
        experts_t = torch.from_numpy(experts)
        gates = torch.sigmoid(host_logits[tokens_t, experts_t])
        expert_ids, weights = group_slots(tokens_t, experts_t, gates, num_tokens)
        if expert_ids.shape[1] < self.top_k:
            pad = self.top_k - expert_ids.shape[1]
            expert_ids = torch.nn.functional.pad(expert_ids, (0, pad), value=-1)
            weights = torch.nn.functional.pad(weights, (0, pad), value=0.0)
        served = (expert_ids >= 0).sum(dim=1)
        # pairs the balance could not serve (capacity factor below 1) count as dropped
        dropped = torch.arange(self.top_k, device=served.device).unsqueeze(0) >= served.unsqueeze(1)
        info["unserved_pairs"] = int(dropped.sum())
        expert_ids, weights, dropped = (tensor.to(device) for tensor in (expert_ids, weights, dropped))
        return Choice(expert_ids, weights, weights, capacity=capacity, info=info, capacity_done=True, dropped=dropped)
