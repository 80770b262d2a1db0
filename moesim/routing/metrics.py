"""What a routing result costs: drops, imbalance, affinity lost, traffic between ranks and nodes.

All functions are vectorised over tokens. Traffic needs a placement (which rank holds
each expert) and the rank each token starts on; a token's hidden vector is sent once
to every distinct rank among its experts (the usual dispatch that deduplicates
copies to the same rank).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from moesim.routing.assignment import Assignment


def drop_rate(assignment: Assignment) -> float:
    """Dropped token-expert pairs / pairs the rule asked for."""
    requested = assignment.num_requested
    return assignment.num_dropped / requested if requested else 0.0


def load_imbalance(assignment: Assignment) -> float:
    """Max expert load / mean expert load (1.0 = perfectly balanced)."""
    load = assignment.expert_load.double()
    mean = load.mean()
    return float(load.max() / mean) if mean > 0 else 1.0


def load_cv(assignment: Assignment) -> float:
    """Coefficient of variation of expert load (std / mean, population std)."""
    load = assignment.expert_load.double()
    mean = load.mean()
    return float(load.std(unbiased=False) / mean) if mean > 0 else 0.0


def affinity_captured(assignment: Assignment, logits: torch.Tensor, top_k: int) -> float:
    """Softmax probability mass the served pairs capture / what unconstrained top-k would.

    1.0 means the rule (after capacity) serves every token its own best experts.
    """
    probs = torch.softmax(logits[:, -assignment.num_experts :].double(), dim=-1)
    best = torch.topk(probs, top_k, dim=-1).values.sum()
    served = assignment.served
    rows = torch.arange(assignment.num_tokens).unsqueeze(1).expand_as(assignment.expert_ids)
    got = probs[rows[served], assignment.expert_ids[served]].sum()
    return float(got / best) if best > 0 else 0.0


def rank_traffic_tokens(
    assignment: Assignment,
    expert_rank: torch.Tensor,
    source_rank: torch.Tensor,
    num_ranks: int,
    num_destinations: Optional[int] = None,
) -> torch.Tensor:
    """[ranks, destinations] token copies from each source rank to each destination (deduplicated per destination).

    `expert_rank` maps each expert to its destination: a rank, or a node to count
    node-deduplicated traffic (then pass `num_destinations`, the number of nodes); or, shaped as
    `expert_ids`, gives each (token, slot) its own destination (replicated experts).
    """
    destinations_count = num_destinations or num_ranks
    served = assignment.served
    rows = torch.arange(assignment.num_tokens).unsqueeze(1).expand_as(assignment.expert_ids)
    destination = torch.full_like(assignment.expert_ids, -1)
    per_slot = expert_rank.dim() == 2
    destination[served] = (expert_rank[served] if per_slot else expert_rank[assignment.expert_ids[served]]).to(
        destination.dtype
    )
    token_rank_pairs = torch.unique(rows[served] * destinations_count + destination[served])
    tokens = token_rank_pairs // destinations_count
    destinations = token_rank_pairs % destinations_count
    flat = source_rank[tokens].long() * destinations_count + destinations
    counts = torch.bincount(flat, minlength=num_ranks * destinations_count)
    return counts.view(num_ranks, destinations_count)


def nodes_per_token(assignment: Assignment, expert_rank: torch.Tensor, gpus_per_node: int) -> torch.Tensor:
    """Distinct nodes each token's experts live on, [tokens]."""
    served = assignment.served
    node = torch.full_like(assignment.expert_ids, -1)
    node[served] = expert_rank[assignment.expert_ids[served]] // gpus_per_node
    sorted_nodes = torch.sort(node, dim=1).values
    distinct = (sorted_nodes[:, 1:] != sorted_nodes[:, :-1]) & (sorted_nodes[:, 1:] >= 0)
    return distinct.sum(dim=1) + (sorted_nodes[:, :1] >= 0).squeeze(1).long()


@dataclass(frozen=True)
class RoutingMetrics:
    """Headline figures of one routing result."""

    tokens: int
    drop_rate: float
    load_imbalance: float
    load_cv: float
    tokens_without_expert: int
    affinity_captured: float
    dispatch_bytes: float
    bytes_across_nodes: float
    mean_nodes_per_token: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize_routing(
    assignment: Assignment,
    logits: torch.Tensor,
    top_k: int,
    expert_rank: Optional[torch.Tensor] = None,
    source_rank: Optional[torch.Tensor] = None,
    num_ranks: int = 1,
    gpus_per_node: int = 8,
    bytes_per_token: float = 0.0,
) -> RoutingMetrics:
    """Every metric at once; traffic figures are zero without a placement. Reads values: GPU tensors are copied to
    the host."""
    assignment, logits = assignment.to("cpu"), logits.cpu()
    dispatch = across = mean_nodes = 0.0
    if expert_rank is not None and source_rank is not None:
        traffic = rank_traffic_tokens(assignment, expert_rank, source_rank, num_ranks).double() * bytes_per_token
        node = torch.arange(num_ranks) // gpus_per_node
        crosses = node.unsqueeze(1) != node.unsqueeze(0)
        off_rank = ~torch.eye(num_ranks, dtype=torch.bool)
        dispatch = float(traffic[off_rank].sum())
        across = float(traffic[crosses].sum())
        mean_nodes = (
            float(nodes_per_token(assignment, expert_rank, gpus_per_node).double().mean())
            if assignment.num_tokens
            else 0.0
        )
    return RoutingMetrics(
        tokens=assignment.num_tokens,
        drop_rate=drop_rate(assignment),
        load_imbalance=load_imbalance(assignment),
        load_cv=load_cv(assignment),
        tokens_without_expert=assignment.tokens_without_expert,
        affinity_captured=affinity_captured(assignment, logits, top_k),
        dispatch_bytes=dispatch,
        bytes_across_nodes=across,
        mean_nodes_per_token=mean_nodes,
    )
