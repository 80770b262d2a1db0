"""Auxiliary losses pinned on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from moesim.routing import router_z_loss, sequence_load_balancing_loss, switch_load_balancing_loss


def test_switch_loss_hand_example() -> None:
    # 4 tokens, 2 experts, top-1: tokens 0, 1, 2 go to expert 0, token 3 to expert 1
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    routing_map = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    # f = (3/4, 1/4), P = (2.6/4, 1.4/4) -> 2 x (0.75 x 0.65 + 0.25 x 0.35) = 1.15
    assert switch_load_balancing_loss(probs, routing_map).item() == pytest.approx(1.15)
    # top-1: per-slot and per-token normalisation agree
    assert switch_load_balancing_loss(probs, routing_map, "per_token").item() == pytest.approx(1.15)


def test_balanced_values_per_slot_and_per_token() -> None:
    experts, k, tokens = 8, 2, 64
    probs = torch.full((tokens, experts), 1.0 / experts)
    routing_map = torch.zeros(tokens, experts, dtype=torch.bool)
    for token in range(tokens):
        routing_map[token, [(2 * token) % experts, (2 * token + 1) % experts]] = True
    assert switch_load_balancing_loss(probs, routing_map, "per_slot").item() == pytest.approx(
        1.0
    )  # Megatron, DeepSpeed
    assert switch_load_balancing_loss(probs, routing_map, "per_token").item() == pytest.approx(k)  # transformers


def test_gradient_flows_through_probabilities() -> None:
    logits = torch.randn(16, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    routing_map = torch.nn.functional.one_hot(probs.argmax(-1), 4).bool()
    switch_load_balancing_loss(probs, routing_map).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_z_loss_hand_example() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4 -> mean of squares
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_sequence_loss_hand_example() -> None:
    # one sequence of 2 tokens, 2 experts, top-1; affinities already normalised
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    routing_map = torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)
    # f = 2/(1 x 2) x (2, 0) = (2, 0); P = (0.625, 0.375) -> 1.25
    assert sequence_load_balancing_loss(probs, routing_map, sequence_length=2, top_k=1).item() == pytest.approx(1.25)
    two_sequences = sequence_load_balancing_loss(
        torch.cat([probs, probs.flip(1)]), torch.cat([routing_map, routing_map.flip(1)]), sequence_length=2, top_k=1
    )
    assert two_sequences.item() == pytest.approx(1.25)
    with pytest.raises(ValueError):
        sequence_load_balancing_loss(probs, routing_map, sequence_length=3, top_k=1)
