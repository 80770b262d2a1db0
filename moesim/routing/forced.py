"""Forced balance: the scores are replaced by random ones, so every expert's load is balanced in expectation.

Vendor benchmarks of MoE training (Megatron-Core's `--moe-router-force-load-balancing`, used in NVIDIA's published
MoE throughput) take the router out of the measurement this way: Megatron-Core's `apply_random_logits`
(`transformer/moe/moe_utils.py`, a straight-through `RandomSTE`) replaces the router's logits by standard normal
draws and the model's score function and top-k run on those. So each token's k experts are a uniformly random set of
k distinct experts, spread over the expert-parallel ranks and nodes as any well-mixed routing is (which is what
decides the all-to-all's volume), and each expert's load is binomial around the mean (tokens x k / E), not equal:
the busiest rank of a micro-batch is a few percent above the mean, as in the measured runs.

An earlier version dealt slot j of token t to expert (t k + j) mod E: exact balance, but a token's k experts were
neighbours, on one or two GPUs of one node, so its all-to-all moved a fraction of the bytes a forced-balance
benchmark moves (Qwen3-30B-A3B on EP 16 over two nodes: each token to one GPU instead of about six, in both nodes).

The draws come from the rule's seeded generator (`Router.generator`): a call is a pure function of its inputs. The
weights are the softmax of the drawn logits over the chosen experts (Megatron's softmax-then-top-k, normalised), as
the benchmark computes them; only the executor uses them.
"""

from __future__ import annotations

from typing import Optional

import torch

from moesim.routing.router import Choice, Router


class ForcedBalanceRouter(Router):
    """Top-k of standard normal logits drawn in place of the router's: Megatron-Core's forced load balancing."""

    name = "balanced"

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        drawn = torch.randn(
            logits.shape, generator=self.generator(logits.device), dtype=torch.float32, device=logits.device
        )
        chosen, expert_ids = torch.topk(drawn, self.top_k, dim=-1)
        weights = torch.softmax(chosen, dim=-1)
        return Choice(expert_ids, weights, weights)
