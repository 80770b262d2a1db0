"""The serving planner: the cheapest deployment that serves a request rate within latency targets.

For every GPU type, node count, attention tensor-parallel size and expert-parallel size that fits, the scenario's
`serving` requests arrive at the given rate (Poisson) and are served as `moesim serve` serves them (fast network
mode); a deployment qualifies when it keeps up with the rate and its 90th-percentile time to first token and time
per output token meet the targets. Qualifying deployments rank by dollars per million output tokens; the Pareto
front sets output tokens per second per GPU against the median time per output token. Disaggregated pools and
pipeline parallelism are not searched yet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from moesim.errors import MoesimError
from moesim.planning.plan import DEFAULT_PRICE_PER_GPU_HOUR, check_choices
from moesim.scenario import Scenario, scenario_from_dict
from moesim.serving import ServingResult, simulate_serving

KEEPS_UP = 0.95
"""A deployment keeps up when its engines are busy at most this share of the time (a saturated engine's queue
grows without end; its latency targets catch the rest)."""


@dataclass(frozen=True)
class ServingOption:
    gpu: str
    num_nodes: int
    tp_size: int
    ep_size: int
    gpus: int
    result: ServingResult
    meets: bool


@dataclass(frozen=True)
class ServingPlan:
    options: list[ServingOption]  # those that meet the targets, cheapest first
    pareto: list[ServingOption]
    evaluated: int
    best_achievable: Optional[ServingOption]  # the lowest TPOT p90 among those that keep up, targets or not


def serving_layouts(base: Scenario, gpus: Sequence[str], max_gpus: int) -> Iterable[tuple[str, int, int, int]]:
    """(GPU, nodes, attention TP, EP) that divide evenly: node counts in powers of two."""
    model, per_node = base.model, base.cluster.gpus_per_node
    nodes = [n for n in (2**i for i in range(16)) if n * per_node <= max_gpus]
    tps = [t for t in (1, 2, 4, 8) if per_node % t == 0 and model.num_attention_heads % t == 0]
    for gpu, node_count, tp in itertools.product(gpus, nodes, tps):
        world = node_count * per_node
        for ep in (e for e in range(1, min(model.num_experts, world) + 1) if model.num_experts % e == 0):
            if world % ep == 0:
                yield gpu, node_count, tp, ep


def plan_serving(
    document: dict[str, Any],
    request_rate: float,
    ttft_p90_s: float,
    tpot_p90_s: float,
    gpus: Sequence[str] = ("H100-SXM",),
    max_gpus: int = 64,
    prices: Optional[dict[str, float]] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> ServingPlan:
    """Serve `request_rate` requests/s on every layout; rank those within the targets by cost."""
    if request_rate <= 0 or ttft_p90_s <= 0 or tpot_p90_s <= 0:
        raise MoesimError("--serve: the request rate and both latency targets must be positive")
    base = scenario_from_dict(document)
    check_choices(gpus, [], [], prices or {})
    prices = {**DEFAULT_PRICE_PER_GPU_HOUR, **(prices or {})}
    layouts = list(serving_layouts(base, gpus, max_gpus))
    evaluated: list[ServingOption] = []
    for index, (gpu, nodes, tp, ep) in enumerate(layouts):
        overrides = [
            f"cluster.gpu={gpu}",
            f"cluster.num_nodes={nodes}",
            f"parallelism.tp_size={tp}",
            f"parallelism.ep_size={ep}",
            "parallelism.dp_size=null",
            "parallelism.pp_size=1",
            "workload.global_batch_size=null",
            "simulation.network_mode=fast",
            "serving.arrival=poisson",
            f"serving.request_rate={request_rate}",
            "serving.prefill_pool=null",
            f"serving.price_per_gpu_hour={prices.get(gpu, 3.0)}",
        ]
        try:
            result = simulate_serving(scenario_from_dict(document, overrides))
        except MoesimError:
            result = None  # does not fit, or not a layout this model can take
        if result is not None:
            meets = (
                result.busy_share <= KEEPS_UP and result.ttft_s[90] <= ttft_p90_s and result.tpot_s[90] <= tpot_p90_s
            )
            evaluated.append(ServingOption(gpu, nodes, tp, ep, result.gpus, result, meets))
        if on_progress:
            on_progress(index + 1, len(layouts))
    options = sorted((o for o in evaluated if o.meets), key=lambda o: o.result.dollars_per_million_output_tokens)
    keeping_up = [o for o in evaluated if o.result.busy_share <= KEEPS_UP]
    best = min(keeping_up, key=lambda o: o.result.tpot_s[90], default=None)
    return ServingPlan(options, pareto_front(options), len(evaluated), best)


def pareto_front(options: Sequence[ServingOption]) -> list[ServingOption]:
    """Options no other beats on both output tokens/s per GPU and median time per output token."""
    front: list[ServingOption] = []
    for option in sorted(options, key=lambda o: (o.result.tpot_s[50], -o.result.output_tokens_per_s_per_gpu)):
        if not front or option.result.output_tokens_per_s_per_gpu > front[-1].result.output_tokens_per_s_per_gpu:
            front.append(option)
    return front
