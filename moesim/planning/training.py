"""Capacity planning: the cheapest cluster, parallelism and routing that meet a throughput target.

The search enumerates GPU type x node count x (TP, PP, EP) x routing rule x capacity
factor, keeps the global batch of the scenario, and:

1. prunes with the fast simulator (bottleneck network bound, per-rank clocks): drops
   what does not fit in memory, misses the tokens/s target or drops too many tokens;
2. confirms the cheapest finalists with the full timeline (max-min fair network, SimPy);
3. ranks them by cost: GPU-hours and dollars per million tokens at the per-GPU-hour prices given
   (defaults below, on-demand cloud list prices in late 2025, to be overridden);
4. reports the Pareto front of cost per hour against step time, and a sensitivity
   re-run of the finalists with harsher routing skew and a slower network.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from moesim.cluster.hardware import gpu_preset
from moesim.cluster.power import energy_per_million_tokens
from moesim.errors import MoesimError, unknown_name_message
from moesim.planning import pareto
from moesim.planning.prices import checked_prices, price_per_gpu_hour, with_power
from moesim.routing.names import ROUTING_STRATEGIES
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.step import simulate


@dataclass(frozen=True)
class Candidate:
    gpu: str
    num_nodes: int
    tp_size: int
    pp_size: int
    ep_size: int
    strategy: str
    capacity_factor: Optional[float]

    def overrides(self) -> list[str]:
        factor = "null" if self.capacity_factor is None else str(self.capacity_factor)
        return [
            f"cluster.gpu={self.gpu}",
            f"cluster.num_nodes={self.num_nodes}",
            f"parallelism.tp_size={self.tp_size}",
            f"parallelism.pp_size={self.pp_size}",
            f"parallelism.ep_size={self.ep_size}",
            "parallelism.dp_size=null",
            f"routing.strategy={self.strategy}",
            f"routing.capacity_factor={factor}",
        ]


@dataclass(frozen=True)
class Option:
    """A candidate that fits, with its simulated figures and cost."""

    candidate: Candidate
    gpus: int
    step_time_s: float
    tokens_per_s: float
    drop_rate: float
    memory_gb: float
    dollars_per_hour: float
    dollars_per_million_tokens: float
    confirmed: bool

    @property
    def gpu_hours_per_million_tokens(self) -> float:
        return self.gpus / (self.tokens_per_s * 3600) * 1e6

    def as_dict(self) -> dict[str, Any]:
        energy = energy_per_million_tokens(gpu_preset(self.candidate.gpu), self.tokens_per_s / self.gpus)
        return {
            **asdict(self.candidate),
            **{k: v for k, v in asdict(self).items() if k != "candidate"},
            "gpu_hours_per_million_tokens": self.gpu_hours_per_million_tokens,
            "energy_kwh_per_million_tokens": energy.kwh_per_million_tokens if energy else None,
        }


def option_scenario(document: dict[str, Any], option: Option) -> Scenario:
    """The scenario the planner simulated for `option` (its layout over the planned document, full timeline)."""
    return scenario_from_dict(document, [*option.candidate.overrides(), "simulation.network_mode=full"])


def _divisors(value: int, limit: int) -> list[int]:
    return [d for d in range(1, min(value, limit) + 1) if value % d == 0]


def candidates(
    base: Scenario,
    gpus: Sequence[str],
    max_gpus: int,
    strategies: Sequence[str],
    capacity_factors: Sequence[Optional[float]],
) -> Iterable[Candidate]:
    """Every structurally valid combination (world size, divisibility), before simulation."""
    model = base.model
    per_node = base.cluster.gpus_per_node
    nodes = [n for n in (2**i for i in range(16)) if n * per_node <= max_gpus]
    tps = [t for t in (1, 2, 4, 8) if per_node % t == 0 and model.num_attention_heads % t == 0]
    pps = [p for p in (1, 2, 4, 8, 16) if p <= model.num_layers]
    eps = _divisors(model.num_experts, max_gpus)
    # node counts innermost: layouts that differ only in their data-parallel size follow each other, so the
    # simulator reuses their stage programs (`moesim.sim.stages`)
    for gpu, tp, pp, ep, strategy, factor, node_count in itertools.product(
        gpus, tps, pps, eps, strategies, capacity_factors, nodes
    ):
        world = node_count * per_node
        if world % (tp * pp):
            continue
        dp = world // (tp * pp)
        if (dp * tp) % ep or ep > dp * tp:
            continue
        batch = base.workload.global_batch_size or 1
        if base.workload.mode == "training" and batch % (base.workload.micro_batch_size * dp):
            continue
        yield Candidate(gpu, node_count, tp, pp, ep, strategy, factor)


def _evaluate(
    document: dict[str, Any], candidate: Candidate, mode: str, prices: dict[str, float], extra: Sequence[str] = ()
) -> Optional[Option]:
    try:
        scenario = scenario_from_dict(document, [*candidate.overrides(), f"simulation.network_mode={mode}", *extra])
        result = simulate(scenario)
    except MoesimError:
        return None  # does not fit, or not a valid layout for this model
    gpus = scenario.cluster.world_size
    per_hour = gpus * price_per_gpu_hour(prices, candidate.gpu)
    return Option(
        candidate,
        gpus,
        result.step_time_s,
        result.tokens_per_s,
        result.drop_rate,
        result.memory["total_bytes"] / 1e9,
        per_hour,
        per_hour / (result.tokens_per_s * 3600) * 1e6,
        mode == "full",
    )


@dataclass(frozen=True)
class Plan:
    """The answer: ranked confirmed options, the Pareto front, and the sensitivity re-run."""

    options: list[Option]
    pareto: list[Option]
    harsher: list[Option]
    evaluated: int
    feasible: int
    best_achievable: Optional[Option] = None
    """The fastest layout within the drop-rate limit, target or not (what to say when nothing meets the target)."""
    best_per_gpu: dict[str, Option] = field(default_factory=dict)
    """Each searched GPU type's cheapest layout that meets the target, confirmed in full mode (a GPU none of whose
    layouts meets it is absent): what a buyer compares when the overall cheapest is another GPU."""


PARETO_GAIN = 0.01
"""A dearer option enters the Pareto front only if it is at least this much faster: smaller gains are below the
simulator's resolution (and a layout with more GPUs but the same step time is no better)."""


def pareto_front(options: Sequence[Option]) -> list[Option]:
    """Options no other beats on both cost per hour and step time (by more than `PARETO_GAIN`)."""
    return pareto.pareto_front(options, lambda o: (o.dollars_per_hour, o.step_time_s), PARETO_GAIN)


def check_choices(strategies: Sequence[str], factors: Sequence[Optional[float]]) -> None:
    """Every routing rule the planner is given exists and every capacity factor is usable (GPUs and prices:
    `prices.checked_prices`); else an error naming the option."""
    for name in strategies:
        if name not in ROUTING_STRATEGIES:
            raise MoesimError(f"--strategies: {unknown_name_message('routing rule', name, list(ROUTING_STRATEGIES))}")
    for factor in factors:
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0):
            raise MoesimError(
                f"--capacity-factors: {factor!r} is not a capacity factor; use positive numbers or null "
                "(dropless), e.g. null,1.0,1.25"
            )


def plan(
    document: dict[str, Any],
    target_tokens_per_s: float,
    gpus: Sequence[str] = ("H100-SXM",),
    max_gpus: int = 512,
    max_drop_rate: float = 1.0,
    strategies: Optional[Sequence[str]] = None,
    capacity_factors: Optional[Sequence[Optional[float]]] = None,
    prices: Optional[dict[str, float]] = None,
    finalists: int = 5,
    on_progress: Optional[Callable[[str, int, int], None]] = None,
    kwh_price: float = 0.0,
) -> Plan:
    """Search, prune fast, confirm in full, rank by cost (the GPU-hour's price, plus the GPUs' board power at
    `kwh_price` dollars per kWh where one is given)."""
    base = scenario_from_dict(document)
    strategies = list(strategies or [base.routing.strategy])
    factors = list(capacity_factors) if capacity_factors is not None else [base.routing.capacity_factor]
    prices = with_power(checked_prices(gpus, prices), gpus, kwh_price)
    check_choices(strategies, factors)
    pool = list(candidates(base, gpus, max_gpus, strategies, factors))
    if not pool:
        raise MoesimError("plan: no cluster layout fits the constraints; raise --max-gpus or add GPU types")
    fast: list[Option] = []
    best: Optional[Option] = None
    for index, candidate in enumerate(pool):
        option = _evaluate(document, candidate, "fast", prices)
        if option and option.drop_rate <= max_drop_rate and (best is None or option.tokens_per_s > best.tokens_per_s):
            best = option
        if option and option.tokens_per_s >= target_tokens_per_s and option.drop_rate <= max_drop_rate:
            fast.append(option)
        if on_progress:
            on_progress("fast search", index + 1, len(pool))
    by_cost = sorted(fast, key=lambda o: (o.dollars_per_million_tokens, o.gpus))
    chosen = by_cost[:finalists]
    full_runs: dict[Candidate, Optional[Option]] = {}  # each layout simulated in full once

    def full_run(candidate: Candidate) -> Optional[Option]:
        if candidate not in full_runs:
            full_runs[candidate] = _evaluate(document, candidate, "full", prices)
        return full_runs[candidate]

    confirmed = []
    for index, option in enumerate(chosen):
        full = full_run(option.candidate)
        if full and full.tokens_per_s >= target_tokens_per_s:
            confirmed.append(full)
        if on_progress:
            on_progress("confirm", index + 1, len(chosen))
    harsher_skew = (base.workload.expert_popularity_skew or 0.0) + 0.5
    nic = (base.cluster.nic_gbps or 400) / 2
    harsher = []
    for option in confirmed:
        rerun = _evaluate(
            document,
            option.candidate,
            "fast",
            prices,
            [f"workload.expert_popularity_skew={harsher_skew}", f"cluster.nic_gbps={nic}"],
        )
        if rerun:
            harsher.append(rerun)
    ranked = sorted(confirmed, key=lambda o: o.dollars_per_million_tokens)
    per_gpu: dict[str, Option] = {}
    for option in by_cost:
        gpu = option.candidate.gpu
        if gpu in per_gpu:
            continue
        full = full_run(option.candidate)
        if full and full.tokens_per_s >= target_tokens_per_s:
            per_gpu[gpu] = full
    return Plan(
        ranked,
        pareto_front(fast),
        sorted(harsher, key=lambda o: o.dollars_per_million_tokens),
        len(pool),
        len(fast),
        best,
        per_gpu,
    )
