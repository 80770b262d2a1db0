"""Hash routing (Roller et al. 2021): experts from a fixed hash of the token id.

* `hash` — expert = splitmix64(token_id) mod num_experts for k = 1; for k > 1 each
  expert gets a hash score per token and the k largest win (k distinct experts).
* `balanced_hash` — a lookup table built from token frequencies: ids are taken from most
  to least frequent and each goes to the expert with the least load so far
  (longest-processing-time scheduling, within 4/3 of the best possible maximum load), so
  frequent ids are spread and each expert's expected load is nearly equal. Building the
  table walks the vocabulary once (not the tokens); routing is a table lookup. The frequencies come
  from `token_counts` (a [vocab] array), or from the first batch routed, after which
  the table is fixed. Ids outside the table fall back to the plain hash.

Router scores are not used (only their shape), and every slot has weight 1 / k.
"""

from __future__ import annotations

import heapq
from typing import Optional, Sequence

import numpy as np
import torch

from moesim.routing.router import Choice, Router

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A fixed, well-mixed 64-bit hash (Steele et al. 2014), vectorised, wrapping arithmetic."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_experts(token_ids: torch.Tensor, num_experts: int, top_k: int, salt: int = 0) -> torch.Tensor:
    """[tokens, k] distinct experts for each token id."""
    ids = token_ids.numpy().astype(np.int64).view(np.uint64) ^ np.uint64(salt)
    if top_k == 1:
        return torch.from_numpy((splitmix64(ids) % np.uint64(num_experts)).astype(np.int64)).unsqueeze(1)
    pair_keys = ids[:, None] * np.uint64(num_experts) + np.arange(num_experts, dtype=np.uint64)[None, :]
    scores = torch.from_numpy((splitmix64(pair_keys) >> np.uint64(11)).astype(np.int64))
    return torch.topk(scores, top_k, dim=1).indices


def _require_ids(name: str, token_ids: Optional[torch.Tensor]) -> torch.Tensor:
    if token_ids is None:
        raise ValueError(f"{name} routing needs token_ids: route(scores, token_ids=...)")
    return token_ids.long()


class HashRouter(Router):
    """Fixed hash of the token id."""

    name = "hash"

    def __init__(self, num_experts: int, top_k: int = 1, salt: int = 0, **options: object) -> None:
        super().__init__(num_experts, top_k, **options)  # type: ignore[arg-type]
        self.salt = salt

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        ids = _require_ids(self.name, token_ids)
        expert_ids = hash_experts(ids, self.num_experts, self.top_k, self.salt)
        weights = torch.full(expert_ids.shape, 1.0 / self.top_k)
        return Choice(expert_ids, weights, weights)


class BalancedHashRouter(Router):
    """Frequency-aware hash table that spreads frequent token ids across experts."""

    name = "balanced_hash"

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        token_counts: Optional[Sequence[float]] = None,
        salt: int = 0,
        **options: object,
    ) -> None:
        super().__init__(num_experts, top_k, **options)  # type: ignore[arg-type]
        self.salt = salt
        self.table: Optional[torch.Tensor] = None
        if token_counts is not None:
            self.fit(torch.as_tensor(np.asarray(token_counts, dtype=np.float64)))

    def fit(self, token_counts: torch.Tensor) -> None:
        """Build the id -> first expert table from counts per token id."""
        counts = token_counts.double()
        order = torch.argsort(-counts, stable=True)
        table = torch.arange(order.numel()) % self.num_experts  # ids never seen: round robin
        seen = int((counts > 0).sum())
        heap = [(0.0, expert) for expert in range(self.num_experts)]
        chosen = []
        for count in counts[order[:seen]].tolist():  # once per vocabulary entry, at fit time
            load, expert = heapq.heappop(heap)
            chosen.append(expert)
            heapq.heappush(heap, (load + count, expert))
        table[order[:seen]] = torch.tensor(chosen, dtype=torch.long)
        self.table = table

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        ids = _require_ids(self.name, token_ids)
        if self.table is None:
            vocab = int(ids.max()) + 1 if ids.numel() else 1
            self.fit(torch.bincount(ids.clamp_min(0), minlength=vocab).double())
        assert self.table is not None
        inside = (ids >= 0) & (ids < self.table.numel())
        first = hash_experts(ids, self.num_experts, 1, self.salt).squeeze(1)
        first[inside] = self.table[ids[inside]]
        expert_ids = (first.unsqueeze(1) + torch.arange(self.top_k).unsqueeze(0)) % self.num_experts
        weights = torch.full(expert_ids.shape, 1.0 / self.top_k)
        return Choice(expert_ids, weights, weights)
