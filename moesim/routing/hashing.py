"""Hash routing (Roller et al. 2021): experts from a fixed hash of the token id.

* `hash` — expert = splitmix64(token_id) mod num_experts for k = 1; for k > 1 each
  expert gets a hash score per token and the k largest win (k distinct experts). The
  hash runs in torch int64 arithmetic (wrapping, with logical shifts) on the ids'
  device, bit for bit the 64-bit unsigned splitmix64.
* `balanced_hash` — a lookup table built from token frequencies: ids are taken from most
  to least frequent and each goes to the expert with the least load so far
  (longest-processing-time scheduling, within 4/3 of the best possible maximum load), so
  frequent ids are spread and each expert's expected load is nearly equal. Building the
  table walks the vocabulary once (not the tokens) on the host, by nature (a heap); the
  counts move to the CPU for it and the finished table moves to the ids' device, where
  routing is a lookup. The frequencies come from `token_counts` (a [vocab] array), or
  from the first batch routed, after which the table is fixed. Ids outside the table
  fall back to the plain hash.

Router scores are not used (only their shape), and every slot has weight 1 / k.
"""

from __future__ import annotations

import heapq
from typing import Optional, Sequence

import numpy as np
import torch

from moesim.routing.router import Choice, Router

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    """The int64 with the bits of an unsigned 64-bit constant."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits: torch's >> on int64 copies the sign bit."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(values: torch.Tensor) -> torch.Tensor:
    """A fixed, well-mixed 64-bit hash (Steele et al. 2014) of int64 tensors, wrapping arithmetic.

    The result holds the bits of the unsigned hash in an int64 tensor (negative when the
    top bit is set).
    """
    z = values.long() + _signed(_GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    return z ^ _shift_right(z, 31)


def _unsigned_mod(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """values mod divisor, reading the int64 bits as unsigned 64-bit numbers."""
    remainder = torch.remainder(values, divisor)
    return torch.where(values < 0, torch.remainder(remainder + (1 << 64) % divisor, divisor), remainder)


def hash_experts(token_ids: torch.Tensor, num_experts: int, top_k: int, salt: int = 0) -> torch.Tensor:
    """[tokens, k] distinct experts for each token id, on the ids' device."""
    ids = token_ids.long() ^ salt
    if top_k == 1:
        return _unsigned_mod(splitmix64(ids), num_experts).unsqueeze(1)
    pair_keys = ids.unsqueeze(1) * num_experts + torch.arange(num_experts, device=ids.device).unsqueeze(0)
    scores = _shift_right(splitmix64(pair_keys), 11)
    return torch.topk(scores, top_k, dim=1).indices


def _require_ids(name: str, token_ids: Optional[torch.Tensor]) -> torch.Tensor:
    if token_ids is None:
        raise ValueError(f"{name} routing needs token_ids: route(scores, token_ids=...)")
    return token_ids.long()


def _equal_weights(expert_ids: torch.Tensor, top_k: int) -> torch.Tensor:
    return torch.full(expert_ids.shape, 1.0 / top_k, device=expert_ids.device)


class HashRouter(Router):
    """Fixed hash of the token id."""

    name = "hash"

    def __init__(self, num_experts: int, top_k: int = 1, salt: int = 0, **options: object) -> None:
        super().__init__(num_experts, top_k, **options)  # type: ignore[arg-type]
        self.salt = salt

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        ids = _require_ids(self.name, token_ids).to(logits.device)
        expert_ids = hash_experts(ids, self.num_experts, self.top_k, self.salt)
        weights = _equal_weights(expert_ids, self.top_k)
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
            self.fit(torch.from_numpy(np.asarray(token_counts, dtype=np.float64)))

    def fit(self, token_counts: torch.Tensor) -> None:
        """Build the id -> first expert table from counts per token id (on the host, by nature)."""
        counts = token_counts.detach().cpu().double()
        order = torch.argsort(-counts, stable=True)
        table = torch.arange(order.numel(), device=counts.device) % self.num_experts  # ids never seen: round robin
        seen = int((counts > 0).sum())
        heap = [(0.0, expert) for expert in range(self.num_experts)]
        chosen = []
        for count in counts[order[:seen]].tolist():  # once per vocabulary entry, at fit time
            load, expert = heapq.heappop(heap)
            chosen.append(expert)
            heapq.heappush(heap, (load + count, expert))
        table[order[:seen]] = torch.tensor(chosen, dtype=torch.long, device=counts.device)
        self.table = table

    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        ids = _require_ids(self.name, token_ids).to(logits.device)
        if self.table is None:
            host_ids = ids.cpu()  # the table is built on the host from the first batch's counts
            vocab = int(host_ids.max()) + 1 if host_ids.numel() else 1
            self.fit(torch.bincount(host_ids.clamp_min(0), minlength=vocab).double())
        assert self.table is not None
        if self.table.device != ids.device:
            self.table = self.table.to(ids.device)  # once: routing is a lookup where the ids are
        size = self.table.numel()
        inside = (ids >= 0) & (ids < size)
        looked_up = self.table[ids.clamp(0, size - 1)]
        first = torch.where(inside, looked_up, hash_experts(ids, self.num_experts, 1, self.salt).squeeze(1))
        expert_ids = (first.unsqueeze(1) + torch.arange(self.top_k, device=ids.device).unsqueeze(0)) % self.num_experts
        weights = _equal_weights(expert_ids, self.top_k)
        return Choice(expert_ids, weights, weights)
