"""How much the attention ranks of an expert-parallel group could differ, and what that would cost.

With data-parallel attention each rank of an EP group runs attention on its own requests, and the ranks meet in
every MoE layer's all-to-all: an iteration goes at the pace of the slowest. moesim serves one rank and takes the
others as alike, as a load balancer keeps them (DeepSeek's decode balancer equalizes requests and KV cache a GPU,
its prefill balancer the prompt tokens; SGLang deals requests to the rank with the fewest tokens). How far that
assumption carries is measured on the simulated rank itself: its requests arrive at random (a Poisson share of
the stream) and its attention time varies from iteration to iteration; were G ranks dealt requests at random,
independent and each varying so, the slowest would exceed the typical rank by that spread times the expected
largest of G standard normal draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moesim.sim.plan import attention_ranks_per_expert_group

if TYPE_CHECKING:
    from moesim.scenario import Scenario
    from moesim.serving.iteration import IterationCost


def expected_largest_normal(count: int) -> float:
    """E[max of `count` independent standard normal draws] (0 for one; 1/sqrt(pi) for two)."""
    if count <= 1:
        return 0.0
    x, step = np.linspace(-10.0, 10.0, 20001, retstep=True)
    density = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    below = np.cumsum(density) * step  # the normal's distribution function on the grid
    return float(np.sum(x * count * density * below ** (count - 1)) * step)


def ranks_per_group(scenario: "Scenario") -> int:
    """Attention ranks that meet in one EP group's all-to-alls (1 for replicas that share none)."""
    return attention_ranks_per_expert_group(scenario)


@dataclass
class AttentionRecorder:
    """An engine's iteration times, and each iteration's attention seconds beside them."""

    cost: "IterationCost"
    attention_s: list[float] = field(default_factory=list)
    iteration_s: list[float] = field(default_factory=list)

    def seconds(self, prefill: int, prefill_context: float, decode: int, decode_context: float, *rest: int) -> float:
        seconds = self.cost.seconds(prefill, prefill_context, decode, decode_context, *rest)
        self.attention_s.append(self.cost.attention_seconds(prefill, prefill_context, decode, decode_context))
        self.iteration_s.append(seconds)
        return seconds

    def slowest_extra(self, group: int) -> tuple[float, float]:
        """(the share of an iteration the slowest of `group` ranks dealt requests at random would add, a rank's
        attention spread in seconds), over the iterations between the filling and the draining."""
        middle = slice(len(self.iteration_s) // 5, 4 * len(self.iteration_s) // 5)
        attention, iterations = np.array(self.attention_s[middle]), np.array(self.iteration_s[middle])
        if len(iterations) == 0 or iterations.mean() <= 0:
            return 0.0, 0.0
        spread = float(attention.std())
        return expected_largest_normal(group) * spread / float(iterations.mean()), spread

    def spread_note(self, scenario: "Scenario", pool: str = "") -> list[str]:
        """The note on the ranks' likeness: what the slowest of the group's ranks would add, dealt at random."""
        group = ranks_per_group(scenario)
        if group < 2 or len(self.iteration_s) < 10:
            return []
        extra, spread = self.slowest_extra(group)
        return [
            f"ranks{pool}: the {group} attention ranks of an EP group are taken as alike, as a load balancer keeps "
            f"them; dealt requests at random, the slowest would add about {extra:.0%} to an iteration (a rank's "
            f"attention varies by {spread * 1e3:.3g} ms between iterations here; normal spread, ranks independent)"
        ]
