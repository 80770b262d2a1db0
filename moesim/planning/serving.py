"""The serving planner: the cheapest deployment that serves a request rate within latency targets.

For every GPU type, node count (1, 2, 3, 4, 6, 8, 12, ...) and parallel form that fits -- data-parallel attention
with expert parallelism ("DEP": attention TP t, EP e) or plain tensor parallelism ("TP": replicas of t GPUs,
experts split over them) -- and, from two nodes up, every split of the nodes into a prefill pool and a decode pool
(the prefill pool's EP within a node, NVLink only, or across the pool), the scenario's `serving` requests arrive
at the given rate (Poisson) and are served as `moesim serve` serves them (fast network mode). A
deployment qualifies when it keeps up with the rate (its load, the rate over what its engines serve at their
largest steady batch, at most 95%; the engines of one that cannot are not run) and its 90th-percentile time to
first token and time per output token meet the targets. The cheapest few are then served again with other
engine batch limits (token budget, sequences per engine). Qualifying deployments rank by dollars per million
output tokens; the Pareto front sets output tokens per second per GPU against the median time per output token.
From two nodes up, tensor parallelism within a node also runs with pipeline stages across the nodes ("TP PP2":
vLLM's multi-node form, for a model one node cannot hold), one pool doing both phases.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from moesim.errors import MoesimError
from moesim.planning import pareto
from moesim.planning.prices import checked_prices, price_per_gpu_hour
from moesim.scenario import Scenario, scenario_from_dict
from moesim.serving import ServingResult, simulate_serving
from moesim.serving.iteration import IterationCost, iteration_cost_key
from moesim.serving.pools import deployment_load, pool_scenarios

KEEPS_UP = 0.95
"""By default a deployment keeps up when the rate asks at most this share of what its engines serve at their
largest steady batch (`ServingResult.load`: beyond it the queue grows without end; the latency targets catch the
rest; `max_load` sets another, for headroom). Not the share of the time the engines are busy: a continuous-batching
engine runs iteration after iteration whenever a sequence is in flight, far below its capacity."""


BATCH_LIMITS = ((2048, 64), (2048, 256), (8192, 64), (8192, 256), (16384, 512))
"""(token budget, sequences per engine) tried on the cheapest layouts, beside the scenario's own."""
REFINED = 3
"""Layouts whose batch limits are searched: the cheapest that qualify, else those with the lowest TPOT."""


@dataclass(frozen=True)
class Layout:
    """A deployment shape: GPU, nodes, attention TP, EP, form (DEP or TP) and the prefill pool's nodes (0: one
    pool does both)."""

    gpu: str
    num_nodes: int
    tp_size: int
    ep_size: int
    form: str = "DEP"
    prefill_nodes: int = 0
    prefill_ep: int = 0
    """The prefill pool's EP (0: the scenario's default, the decode pool's at most the pool's GPUs)."""
    pp_size: int = 1
    """Pipeline stages, across nodes (TP form, one pool)."""

    @property
    def form_label(self) -> str:
        """The form as the table shows it: with its pipeline stages where it has them."""
        return f"{self.form} PP{self.pp_size}" if self.pp_size > 1 else self.form

    @property
    def split(self) -> str:
        return f"{self.prefill_nodes}+{self.num_nodes - self.prefill_nodes}" if self.prefill_nodes else "-"

    @property
    def ep_label(self) -> str:
        """EP as the table shows it: the prefill pool's + the decode pool's where the nodes are split."""
        return f"{self.prefill_ep}+{self.ep_size}" if self.prefill_ep else str(self.ep_size)


@dataclass(frozen=True)
class ServingOption:
    layout: Layout
    token_budget: int
    max_running: int
    gpus: int
    result: ServingResult
    meets: bool
    overrides: tuple[str, ...] = ()
    """The settings over the planned scenario that make this option (`option_scenario`)."""

    @property
    def gpu(self) -> str:
        return self.layout.gpu

    @property
    def tp_size(self) -> int:
        return self.layout.tp_size

    @property
    def ep_size(self) -> int:
        return self.layout.ep_size


@dataclass(frozen=True)
class ServingPlan:
    options: list[ServingOption]  # those that meet the targets, cheapest first
    pareto: list[ServingOption]
    evaluated: int
    best_achievable: Optional[ServingOption]  # the lowest TPOT p90 among those that keep up, targets or not
    compute_sources: dict[str, str] = field(default_factory=dict)
    """What each GPU type's iteration times rest on (a measured profile, one derived from another GPU's, or a
    datasheet with an assumed efficiency), by GPU name."""
    considered: list[ServingOption] = field(default_factory=list)
    """Every option served (qualifying or not): what another reading of the targets picks from."""


class SharedIterationCosts:
    """`simulate_serving` with each pool's iteration times built once per pool shape (`iteration_cost_key`) and
    shared by every deployment of that shape: a plan's layouts differ in node counts and splits far more often
    than in their EP groups, and building the iteration times is most of a layout's time."""

    def __init__(self) -> None:
        self._costs: dict[str, IterationCost] = {}

    def cost_for(self, scenario: Scenario) -> IterationCost:
        key = iteration_cost_key(scenario)
        if key not in self._costs:
            self._costs[key] = IterationCost(scenario)
        return self._costs[key]

    def _pool_costs(self, scenario: Scenario) -> tuple[IterationCost, Optional[IterationCost]]:
        """The one pool's, or the decode and the prefill pools' iteration times."""
        costs = {phase: self.cost_for(pool) for pool, phase in pool_scenarios(scenario)}
        return costs.get("both") or costs["decode"], costs.get("prefill")

    def compute_sources(self) -> dict[str, str]:
        """What the iteration times built so far rest on, by GPU name."""
        return {cost.scenario.cluster.gpu.name: cost.cost.source for cost in self._costs.values()}

    def serve(self, scenario: Scenario) -> ServingResult:
        """`simulate_serving(scenario)`, figure for figure."""
        return simulate_serving(scenario, *self._pool_costs(scenario))

    def load(self, scenario: Scenario) -> Optional[float]:
        """`deployment_load(scenario)`: the load `serve` would report, without serving."""
        return deployment_load(scenario, *self._pool_costs(scenario))


NODE_COUNTS = sorted({2**i for i in range(16)} | {3 * 2**i for i in range(15)})
"""Node counts (and prefill pools) the serving search tries: powers of two and three times them."""


def _widest_ep(num_experts: int, ranks: int) -> int:
    """The largest EP that divides the experts and the attention ranks it spans."""
    return max(e for e in range(1, min(num_experts, ranks) + 1) if num_experts % e == 0 and ranks % e == 0)


def serving_layouts(base: Scenario, gpus: Sequence[str], max_gpus: int) -> Iterable[Layout]:
    """Layouts that divide evenly: node counts in steps of 1.5x or 2x (1, 2, 3, 4, 6, 8, 12, ...: a plan is never
    more than a third larger than it must be); DEP (attention TP x EP) and TP (replicas of TP GPUs, each expert
    split over them); from two nodes, prefill pools of those counts up to half the nodes, a
    DEP prefill pool with its EP within one node or across the whole pool, and TP within a node with pipeline
    stages (powers of two) across the nodes."""
    model, per_node = base.model, base.cluster.gpus_per_node
    nodes = [n for n in NODE_COUNTS if n * per_node <= max_gpus]
    tps = [t for t in (1, 2, 4, 8) if per_node % t == 0 and model.num_attention_heads % t == 0]
    for gpu, node_count, tp in itertools.product(gpus, nodes, tps):
        world = node_count * per_node
        splits = [0] + [p for p in NODE_COUNTS if 2 * p <= node_count]
        for prefill in splits:
            decode_world = (node_count - prefill) * per_node
            prefill_eps = sorted(
                {_widest_ep(model.num_experts, per_node // tp), _widest_ep(model.num_experts, prefill * per_node // tp)}
                if prefill
                else {0}
            )
            for ep in (e for e in range(1, min(model.num_experts, world) + 1) if model.num_experts % e == 0):
                if decode_world % ep == 0:
                    for prefill_ep in prefill_eps:
                        yield Layout(gpu, node_count, tp, ep, "DEP", prefill, prefill_ep)
            if tp > 1 and model.moe_intermediate_size % tp == 0:
                yield Layout(gpu, node_count, tp, 1, "TP", prefill)
        if tp == per_node and tp > 1 and model.moe_intermediate_size % tp == 0:  # TP in a node, stages across nodes
            stages = (2**i for i in range(1, 16))
            for pp in (p for p in stages if p <= node_count and node_count % p == 0 and p <= model.num_layers):
                yield Layout(gpu, node_count, tp, 1, "TP", 0, pp_size=pp)


def _overrides(layout: Layout, request_rate: float, price: float, budget: int, running: int) -> list[str]:
    decode_nodes = layout.num_nodes - layout.prefill_nodes
    pool_ep = f", ep_size: {layout.prefill_ep}" if layout.prefill_ep else ""
    pool = (
        f"serving.prefill_pool={{num_nodes: {layout.prefill_nodes}, tp_size: {layout.tp_size}{pool_ep}}}"
        if layout.prefill_nodes
        else "serving.prefill_pool=null"
    )
    return [
        f"cluster.gpu={layout.gpu}",
        f"cluster.num_nodes={decode_nodes}",
        f"parallelism.tp_size={layout.tp_size}",
        f"parallelism.ep_size={layout.ep_size}",
        f"parallelism.expert_tp_size={layout.tp_size if layout.form == 'TP' else 1}",
        "parallelism.dp_size=null",
        f"parallelism.pp_size={layout.pp_size}",
        "workload.global_batch_size=null",
        "simulation.network_mode=fast",
        "serving.arrival=poisson",
        f"serving.request_rate={request_rate}",
        pool,
        f"serving.price_per_gpu_hour={price}",
        f"serving.token_budget={budget}",
        f"serving.max_running={running}",
    ]


def searchable_layouts(base: Scenario, gpus: Sequence[str], max_gpus: int) -> list[Layout]:
    """The layouts `plan --serve` will serve (`serving_layouts`), or an error saying why there are none: a training
    scenario, or fewer GPUs allowed than one node holds."""
    if base.workload.mode != "inference":
        raise MoesimError(
            "plan --serve: this is a training scenario (workload.mode: training); set workload.mode=inference (and a "
            "serving section), or size training with --target-tokens-per-s"
        )
    layouts = list(serving_layouts(base, gpus, max_gpus))
    if not layouts:
        per_node = base.cluster.gpus_per_node
        raise MoesimError(
            f"--max-gpus: plan --serve searches whole nodes of {per_node} GPUs (cluster.gpus_per_node), more than "
            f"{max_gpus}; give at least {per_node}"
            if max_gpus < per_node
            else f"plan --serve: no layout of at most {max_gpus} GPUs divides {base.model.name}'s heads and experts "
            "evenly; raise --max-gpus"
        )
    return layouts


def check_targets(request_rate: float, ttft_p90_s: float, tpot_p90_s: float, max_load: float) -> None:
    """Raise unless the rate, both latency targets and the load limit are usable, naming the option."""
    for option, value in (("--request-rate", request_rate), ("--ttft", ttft_p90_s), ("--tpot", tpot_p90_s)):
        if not value > 0:
            raise MoesimError(f"{option}: {value:g} is no target for --serve; give a value above 0")
    if not 0 < max_load <= 1:
        raise MoesimError(f"--max-load: {max_load} is not a load; give a share of capacity above 0, at most 1")


def plan_serving(
    document: dict[str, Any],
    request_rate: float,
    ttft_p90_s: float,
    tpot_p90_s: float,
    gpus: Sequence[str] = ("H100-SXM",),
    max_gpus: int = 64,
    prices: Optional[dict[str, float]] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
    max_load: float = KEEPS_UP,
    kwh_price: Optional[float] = None,
    margin: tuple[float, float] = (1.0, 1.0),
) -> ServingPlan:
    """Serve `request_rate` requests/s on every layout, then the cheapest with other batch limits; rank those within
    the targets, at a load of at most `max_load`, by cost. `margin`: (TTFT, TPOT) factors the predicted 90th
    percentiles are taken larger by before they meet the targets (`cheapest_within`)."""
    check_targets(request_rate, ttft_p90_s, tpot_p90_s, max_load)

    def keeps_up(result: ServingResult) -> bool:
        return keeps_up_at(result, max_load)

    base = scenario_from_dict(document)
    prices = checked_prices(gpus, prices)
    layouts = searchable_layouts(base, gpus, max_gpus)
    own = (base.serving.token_budget, base.serving.max_running)
    total = len(layouts) + REFINED * len(BATCH_LIMITS)
    evaluated: list[ServingOption] = []

    shared = SharedIterationCosts()
    overloaded = 0  # layouts whose load alone rules them out: their engines are not run

    def serve(layout: Layout, budget: int, running: int) -> None:
        nonlocal overloaded
        overrides = _overrides(layout, request_rate, price_per_gpu_hour(prices, layout.gpu), budget, running)
        if kwh_price is not None:  # else the scenario's own serving.power_price_per_kwh
            overrides.append(f"serving.power_price_per_kwh={kwh_price}")
        try:
            scenario = scenario_from_dict(document, overrides)
            if (shared.load(scenario) or 0.0) > max_load:
                overloaded += 1
                return
            result = shared.serve(scenario)
        except MoesimError:
            return  # does not fit, or not a layout this model can take
        meets = keeps_up(result) and within(result, ttft_p90_s, tpot_p90_s, margin)
        latencies = (result.ttft_s, result.tpot_s)
        if any(o.layout == layout and (o.result.ttft_s, o.result.tpot_s) == latencies for o in evaluated):
            return  # batch limits that never bind at this rate: the same option again
        evaluated.append(ServingOption(layout, budget, running, result.gpus, result, meets, tuple(overrides)))

    for index, layout in enumerate(layouts):
        serve(layout, *own)
        if on_progress:
            on_progress(index + 1, total)
    qualifying = sorted((o for o in evaluated if o.meets), key=lambda o: o.result.dollars_per_million_output_tokens)
    nearest = sorted((o for o in evaluated if keeps_up(o.result) and not o.meets), key=lambda o: o.result.tpot_s[90])
    for rank, option in enumerate((qualifying + nearest)[:REFINED]):
        for step, (budget, running) in enumerate(BATCH_LIMITS):
            if (budget, running) != own:
                serve(option.layout, budget, running)
            if on_progress:
                on_progress(len(layouts) + rank * len(BATCH_LIMITS) + step + 1, total)
    options = sorted(
        (o for o in evaluated if o.meets),
        key=lambda o: (o.result.dollars_per_million_output_tokens, o.result.tpot_s[90]),
    )
    keeping_up = [o for o in evaluated if keeps_up(o.result)]
    best = min(keeping_up, key=lambda o: o.result.tpot_s[90], default=None)
    sources = shared.compute_sources()
    return ServingPlan(options, pareto_front(options), len(evaluated) + overloaded, best, sources, evaluated)


def keeps_up_at(result: ServingResult, max_load: float) -> bool:
    """Whether a deployment keeps up with its rate: a load, at most `max_load`."""
    return result.load is not None and result.load <= max_load


def within(result: ServingResult, ttft_p90_s: float, tpot_p90_s: float, margin: tuple[float, float]) -> bool:
    """Whether the predicted 90th-percentile TTFT and TPOT, each taken larger by its `margin` factor, meet the
    targets."""
    return result.ttft_s[90] * margin[0] <= ttft_p90_s and result.tpot_s[90] * margin[1] <= tpot_p90_s


def cheapest_within(
    plan: ServingPlan, ttft_p90_s: float, tpot_p90_s: float, max_load: float, margin: tuple[float, float]
) -> Optional[ServingOption]:
    """The cheapest option the plan served that keeps up and meets the targets under another margin."""
    fitting = [
        option
        for option in plan.considered
        if keeps_up_at(option.result, max_load) and within(option.result, ttft_p90_s, tpot_p90_s, margin)
    ]
    return min(fitting, key=lambda o: (o.result.dollars_per_million_output_tokens, o.result.tpot_s[90]), default=None)


def option_scenario(document: dict[str, Any], option: ServingOption) -> Scenario:
    """The scenario `plan_serving` served for `option`: its layout and batch limits over the planned document."""
    return scenario_from_dict(document, list(option.overrides))


def pareto_front(options: Sequence[ServingOption]) -> list[ServingOption]:
    """Options no other beats on both output tokens/s per GPU and median time per output token."""
    return pareto.pareto_front(options, lambda o: (o.result.tpot_s[50], -o.result.output_tokens_per_s_per_gpu))
