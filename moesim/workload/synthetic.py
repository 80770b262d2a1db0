"""Synthetic router scores with the properties that matter for routing studies.

For layer l, step s and token t the logit of expert e is

    logit = (log popularity_l,s[e] + z_t,l[e]) / temperature

* popularity: Zipf weights 1 / rank^skew over a per-layer random order of the experts
  (`expert_popularity_skew` 0 = uniform); between steps the log-popularity takes a
  random walk of size `step_drift`, so hot experts change slowly.
* z_t,l = sqrt(rho) u_t + sqrt(1 - rho) v_t,l with standard normal u (shared by all
  layers) and v (per layer): rho = `layer_correlation` is the correlation of a token's
  scores between layers.
* token ids follow a Zipf law over the vocabulary (`token_id_skew`), for hash routing.
* tokens are split into equal contiguous blocks, one per source rank.

Every array comes from a numpy generator seeded by (seed, step, layer), so the same
arguments give the same scores bit for bit, and layers can be generated independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
import torch

from moesim.workload.scores import RouterScores


@dataclass(frozen=True)
class SyntheticScores:
    """A reproducible generator of router scores for every (step, layer)."""

    num_tokens: int
    num_experts: int
    num_layers: int = 1
    expert_popularity_skew: float = 0.0
    score_temperature: float = 1.0
    layer_correlation: float = 0.0
    step_drift: float = 0.0
    token_id_skew: float = 1.0
    vocab_size: int = 32000
    num_ranks: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_tokens", "num_experts", "num_layers", "vocab_size", "num_ranks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.score_temperature <= 0:
            raise ValueError(f"score_temperature must be > 0, got {self.score_temperature}")
        if not 0.0 <= self.layer_correlation <= 1.0:
            raise ValueError(f"layer_correlation must be in [0, 1], got {self.layer_correlation}")

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *stream]))

    def _normal(self, shape: tuple[int, int], *stream: int) -> torch.Tensor:
        """Standard normals from torch's generator (faster than numpy's for large blocks), seeded per stream."""
        seed = int(np.random.SeedSequence([self.seed, *stream]).generate_state(1)[0])
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def popularity(self, step: int, layer: int) -> np.ndarray:
        """Log-popularity of each expert at (step, layer), centred on zero."""
        ranks = np.arange(1, self.num_experts + 1, dtype=np.float64)
        log_weights = -self.expert_popularity_skew * np.log(ranks)
        order = self._rng(1, layer).permutation(self.num_experts)
        log_popularity = np.empty(self.num_experts)
        log_popularity[order] = log_weights
        if self.step_drift > 0 and step > 0:
            walk = self._rng(2, layer).standard_normal((step, self.num_experts)).sum(axis=0)
            log_popularity = log_popularity + self.step_drift * walk
        return log_popularity - log_popularity.mean()

    @cached_property
    def _token_cdf(self) -> np.ndarray:
        weights = np.arange(1, self.vocab_size + 1, dtype=np.float64) ** (-self.token_id_skew)
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    @cached_property
    def _vocab_order(self) -> np.ndarray:
        return self._rng(4).permutation(self.vocab_size)

    def token_ids(self, step: int) -> torch.Tensor:
        """Token ids of the batch at `step`, Zipf-distributed over the vocabulary."""
        by_rank = np.searchsorted(self._token_cdf, self._rng(3, step).random(self.num_tokens), side="right")
        by_rank = np.minimum(by_rank, self.vocab_size - 1)
        return torch.from_numpy(self._vocab_order[by_rank].astype(np.int64))

    def source_ranks(self) -> torch.Tensor:
        """Rank each token starts on: equal contiguous blocks."""
        return torch.div(torch.arange(self.num_tokens) * self.num_ranks, self.num_tokens, rounding_mode="floor")

    def layer(self, step: int, layer: int) -> RouterScores:
        """Scores of one MoE layer at one step."""
        shape = (self.num_tokens, self.num_experts)
        rho = self.layer_correlation
        logits = torch.zeros(shape)
        if rho > 0:
            logits.add_(self._normal(shape, 5, step), alpha=float(np.sqrt(rho)))
        if rho < 1:
            logits.add_(self._normal(shape, 6, step, layer), alpha=float(np.sqrt(1.0 - rho)))
        logits.add_(torch.from_numpy(self.popularity(step, layer).astype(np.float32)))
        logits.mul_(1.0 / self.score_temperature)
        return RouterScores(
            logits=logits,
            token_ids=self.token_ids(step),
            source_rank=self.source_ranks(),
            layer=layer,
        )

    def step(self, step: int) -> Iterator[RouterScores]:
        """Scores of every MoE layer at one step."""
        for layer in range(self.num_layers):
            yield self.layer(step, layer)
