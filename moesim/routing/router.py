"""The `Router` base class: scores in, `Assignment` out, capacity applied the same way for every rule.

A router is configured once (experts, k, capacity factor, rule options) and then maps
router logits `[tokens, num_experts]` to an `Assignment`. The same object serves the
simulator (CPU tensors) and the executor (tensors on the GPU), so every rule works on the
device of its scores and returns its `Assignment` there: nothing is made on the CPU on
the way, and the rules a GPU layer runs (the top-k family, capacity, expert choice,
group- and node-limited, bias-balanced, Sinkhorn, two-level) never wait for the device
(no `.item()`, no tensor whose shape depends on the data). Checks that would need a
value on the host (finite scores) run on CPU tensors only. The rules that need the host
by nature (BASE's OR-Tools solver, the balanced-hash table's construction) move there
explicitly and say so.

Two weight conventions of published routers apply to every rule, after the rule's own
choice and before capacity: `normalize_weights` (divide each token's weights by their
sum: Mixtral, Qwen3, DBRX and DeepSeek-V3; Hugging Face's `norm_topk_prob`) and
`routed_scaling_factor` (DeepSeek-V2's x16, V3's x2.5).

Rules that draw random numbers (noisy top-k, GShard's second expert) seed a fresh
generator on the scores' device from `seed` on every call, so a call is a pure function
of its inputs on a given device; pass another seed to get other draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from moesim.routing.assignment import Assignment
from moesim.routing.capacity import apply_capacity, expert_capacity


@dataclass
class Choice:
    """What a rule chose before capacity: experts [tokens, slots] (-1 = none), weights, priority."""

    expert_ids: torch.Tensor
    weights: torch.Tensor
    priority: torch.Tensor
    dense_path: Optional[torch.Tensor] = None
    capacity: Optional[int] = None
    info: Optional[dict[str, Any]] = None
    capacity_done: bool = False
    dropped: Optional[torch.Tensor] = None


class Router:
    """Base of every routing rule; subclasses implement `choose`."""

    name: ClassVar[str] = "router"
    uses_capacity: ClassVar[bool] = True
    leaves_empty_slots: ClassVar[bool] = False
    """Whether the rule may leave a slot empty (-1) even without a capacity (so a layer must mask such rows)."""

    def __init__(
        self,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: Optional[float] = None,
        drop_policy: str = "position",
        num_shared_experts: int = 0,
        seed: int = 0,
        normalize_weights: bool = False,
        routed_scaling_factor: float = 1.0,
    ) -> None:
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None (dropless), got {capacity_factor}")
        if drop_policy not in ("position", "probability"):
            raise ValueError(f"drop_policy must be 'position' or 'probability', got {drop_policy!r}")
        if routed_scaling_factor <= 0:
            raise ValueError(f"routed_scaling_factor must be > 0, got {routed_scaling_factor}")
        self.normalize_weights = normalize_weights
        self.routed_scaling_factor = routed_scaling_factor
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.drop_policy = drop_policy
        self.num_shared_experts = num_shared_experts
        self.seed = seed

    # -- to implement -------------------------------------------------------------
    def choose(self, logits: torch.Tensor, token_ids: Optional[torch.Tensor]) -> Choice:
        """The rule itself: which experts each token asks for, before capacity."""
        raise NotImplementedError

    expected_columns_offset: ClassVar[int] = 0
    """Extra score columns a rule expects beyond num_experts (two-level gating's first gate)."""

    # -- shared machinery ----------------------------------------------------------
    def capacity_for(self, num_tokens: int) -> Optional[int]:
        """Slots per expert for a batch of `num_tokens` tokens (None = dropless)."""
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def generator(self, device: torch.device | str = "cpu") -> Optional[torch.Generator]:
        """A fresh generator on `device` seeded from `seed` and the rule's name (same seed, same draws).

        The name is mixed in so that a router seeded like the data (seed 0 for both) does
        not draw the very numbers the scores were made of. Each device type has its own
        random stream, so a GPU draws other numbers than the CPU for the same seed. Meta
        tensors (shape-only, used by tests) have no generator: None.
        """
        device = torch.device(device)
        if device.type == "meta":
            return None
        # torch's CPU generator keeps only 32 bits of a seed, so mix name and seed into 32 bits
        mixed = np.random.SeedSequence([zlib.crc32(self.name.encode()), self.seed]).generate_state(1)[0]
        return torch.Generator(device=device).manual_seed(int(mixed))

    def route(self, scores: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> Assignment:
        """Route a batch: `scores` are router logits [tokens, num_experts]."""
        logits = self._check_scores(scores)
        if token_ids is not None:
            token_ids = as_tensor_here(token_ids).reshape(-1)
            if token_ids.numel() != logits.shape[0]:
                raise ValueError(f"token_ids has {token_ids.numel()} entries for {logits.shape[0]} tokens")
        choice = self.choose(logits, token_ids)
        capacity = choice.capacity
        if choice.capacity_done:
            kept = choice.expert_ids
            dropped = choice.dropped if choice.dropped is not None else torch.zeros_like(kept, dtype=torch.bool)
        else:
            capacity = self.capacity_for(logits.shape[0]) if self.uses_capacity else None
            kept, dropped = apply_capacity(
                choice.expert_ids, choice.priority, capacity, self.drop_policy, self.num_experts
            )
        # a slot can be empty only by the rule's design or by capacity: otherwise skip the masks (fewer kernels);
        # slots the rule left empty stay out of the normalising sum, slots capacity emptied keep their share
        empty_by_rule = self.leaves_empty_slots or choice.capacity_done
        weights = choice.weights
        if empty_by_rule and self.normalize_weights:
            weights = weights.masked_fill(choice.expert_ids < 0, 0.0)
        if self.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        if self.routed_scaling_factor != 1.0:
            weights = weights * self.routed_scaling_factor
        if empty_by_rule:
            weights = weights.masked_fill(kept < 0, 0.0)
        elif capacity is not None:  # only capacity empties a slot: exactly the dropped ones (one kernel fewer)
            weights = weights.masked_fill(dropped, 0.0)
        return Assignment(
            expert_ids=kept,
            weights=weights,
            num_experts=self.num_experts,
            dropped=dropped,
            capacity=capacity,
            num_shared_experts=self.num_shared_experts,
            dense_path=choice.dense_path,
            info=choice.info or {},
        )

    def _check_scores(self, scores: torch.Tensor) -> torch.Tensor:
        scores = as_tensor_here(scores)
        columns = self.num_experts + self.expected_columns_offset
        if scores.dim() != 2 or scores.shape[1] != columns:
            raise ValueError(
                f"{self.name}: scores must be [tokens, {columns}] router logits, got {tuple(scores.shape)}"
            )
        if not scores.is_floating_point():
            raise ValueError(f"{self.name}: scores must be floating point, got {scores.dtype}")
        # one sum is a cheap screen (NaN and inf propagate); look closer only if it is not finite.
        # On a GPU the answer would make the host wait for the device: the check is for CPU scores.
        if (
            scores.device.type == "cpu"
            and scores.numel()
            and not torch.isfinite(scores.sum())
            and not torch.isfinite(scores).all()
        ):
            raise ValueError(f"{self.name}: scores contain NaN or infinity")
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, drop_policy={self.drop_policy!r})"
        )


def as_tensor_here(data: Any) -> torch.Tensor:
    """A tensor left where it is (torch.as_tensor would move it to a default device set by the caller)."""
    return data if isinstance(data, torch.Tensor) else torch.as_tensor(data, device="cpu")


SCORE_FUNCTIONS = ("softmax", "sigmoid")


def check_score_function(score_function: str) -> None:
    """Raise ValueError unless `score_function` is one `scores_to_probs` knows."""
    if score_function not in SCORE_FUNCTIONS:
        raise ValueError(f"score_function must be 'softmax' or 'sigmoid', got {score_function!r}")


def scores_to_probs(logits: torch.Tensor, score_function: str) -> torch.Tensor:
    """Router logits to affinities: softmax over experts, or an independent sigmoid per expert."""
    if score_function == "softmax":
        return torch.softmax(logits, dim=-1)
    if score_function == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score_function must be 'softmax' or 'sigmoid', got {score_function!r}")


def group_slots(
    group_ids: torch.Tensor,
    members: torch.Tensor,
    values: torch.Tensor,
    num_groups: int,
    fill: float = 0.0,
    width: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay out (group, member, value) triples as [num_groups, width] rows, -1 padded.

    Used to turn per-expert picks (expert choice, BASE) into per-token slots without a
    Python loop: sort by group (stable, so members keep their order), rank within
    group, scatter. `width` must be at least the largest group; None takes exactly the
    largest, which asks the data for it (free on the CPU, a wait for a GPU: pass a bound there).
    """
    device = group_ids.device
    count = group_ids.numel()
    order = torch.argsort(group_ids, stable=True)
    sorted_groups = group_ids[order].long()
    counts = torch.zeros(num_groups, dtype=torch.long, device=device).scatter_add_(
        0, sorted_groups, torch.ones_like(sorted_groups)
    )
    if width is None:
        width = int(counts.max()) if count else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(count, device=device) - starts[sorted_groups]
    ids = torch.full((num_groups, max(width, 1)), -1, dtype=torch.long, device=device)
    vals = torch.full((num_groups, max(width, 1)), fill, dtype=values.dtype, device=device)
    ids[sorted_groups, slot] = members[order].long()
    vals[sorted_groups, slot] = values[order]
    return ids, vals
