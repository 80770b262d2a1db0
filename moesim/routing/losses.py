"""Auxiliary router losses, differentiable torch functions the executor can train with.

Normalisation of the Switch load-balancing loss `num_experts x sum_i f_i x P_i`:
f_i is the fraction of routed slots that go to expert i. Megatron-Core and DeepSpeed
divide expert i's token count by tokens x k, so the loss is 1 for a perfectly balanced
router ("per_slot", the default here); Hugging Face transformers divides by tokens,
so the balanced value is k ("per_token"). P_i is the mean router probability of
expert i over tokens in both.
"""

from __future__ import annotations

import torch


def _fractions(routing_map: torch.Tensor, normalization: str) -> torch.Tensor:
    counts = routing_map.float().sum(dim=-2)
    tokens = routing_map.shape[-2]
    if normalization == "per_slot":
        slots = routing_map.float().sum(dim=(-2, -1), keepdim=False).clamp_min(1.0)
        return counts / slots.unsqueeze(-1) if counts.dim() > 1 else counts / slots
    if normalization == "per_token":
        return counts / max(tokens, 1)
    raise ValueError(f"normalization must be 'per_slot' or 'per_token', got {normalization!r}")


def switch_load_balancing_loss(
    probs: torch.Tensor, routing_map: torch.Tensor, normalization: str = "per_slot"
) -> torch.Tensor:
    """Fedus et al. 2021: num_experts x sum_i f_i x P_i.

    `probs` [tokens, experts] are the router probabilities (gradients flow through them);
    `routing_map` [tokens, experts] marks the chosen experts (no gradient).
    """
    num_experts = probs.shape[-1]
    fractions = _fractions(routing_map.detach(), normalization)
    mean_probs = probs.mean(dim=-2)
    return num_experts * (fractions * mean_probs).sum(dim=-1)


def sequence_load_balancing_loss(
    probs: torch.Tensor, routing_map: torch.Tensor, sequence_length: int, top_k: int
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (report, eq. 17-20), before its alpha.

    Per sequence: f_i = num_experts / (k x T) x (tokens choosing i), P_i = mean of the
    normalised affinities s_i / sum_j s_j; loss = sum_i f_i x P_i, averaged over sequences.
    `probs` are affinities [tokens, experts] with tokens grouped by sequence.
    """
    tokens, num_experts = probs.shape
    if tokens % sequence_length:
        raise ValueError(f"{tokens} tokens do not split into sequences of {sequence_length}")
    normalized = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    per_sequence = normalized.view(-1, sequence_length, num_experts)
    chosen = routing_map.detach().float().view(-1, sequence_length, num_experts)
    fractions = chosen.sum(dim=1) * num_experts / (top_k * sequence_length)
    return (fractions * per_sequence.mean(dim=1)).sum(dim=-1).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE (Zoph et al. 2022): mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
