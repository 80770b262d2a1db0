"""Routers and router scores configured from a `Scenario`.

The scenario's `routing` section (with the model's router conventions filled in by the
loader) becomes `make_router` arguments. One scenario can be routed under several rules
for a comparison, as long as each rule honours the settings that decide the choice
(score function, expert groups, correction bias); weight conventions apply to all.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch

from moesim.cluster.placement import Placement
from moesim.errors import MoesimError
from moesim.reuse import reuse
from moesim.routing.bias_balanced import BiasBalancedRouter
from moesim.routing.metrics import RoutingMetrics, summarize_routing
from moesim.routing.names import unhonoured_settings
from moesim.routing.registry import make_router, rule_options
from moesim.routing.router import Router
from moesim.scenario import Scenario
from moesim.workload.scores import RouterScores
from moesim.workload.synthetic import SyntheticScores
from moesim.workload.trace import TraceError, load_trace


def router_for_scenario(scenario: Scenario, strategy: Optional[str] = None) -> Router:
    """The router a scenario asks for (or `strategy` instead, with the same settings).

    The model's router conventions (filled into `routing` by the loader) become rule
    options: weight conventions go to every rule; the score function, expert groups and
    the correction bias go to the rules that take them, and a rule that cannot honour one
    that is set is an error naming it (see `unhonoured_settings`). `routing.options` are
    the rule's own options: one the rule does not take is an error too.
    """
    routing, model = scenario.routing, scenario.model
    name = strategy or routing.strategy
    assert name is not None and routing.score_function is not None  # filled by the loader
    groups, groups_per_token = routing.num_expert_groups, routing.topk_groups
    problems = unhonoured_settings(name, routing.score_function, groups, groups_per_token, model.router_bias)
    if problems:
        raise MoesimError(f"routing.strategy: '{name}' cannot honour {'; '.join(problems)}")
    settings: dict[str, Any] = {
        "drop_policy": routing.drop_policy,
        "num_shared_experts": model.num_shared_experts,
        "seed": scenario.seed,
        "normalize_weights": bool(routing.normalize_weights),
        "routed_scaling_factor": model.routed_scaling_factor,
        "score_function": routing.score_function,
        "group_score": routing.group_score,
    }
    if groups is not None:
        settings.update(num_expert_groups=groups, topk_groups=groups_per_token)
    elif name == "group_limited":
        # no groups in the model: one group per node of the expert-parallel group
        nodes = Placement(model.num_experts, scenario.parallelism.ep_size, scenario.cluster.gpus_per_node).num_nodes
        settings.update(num_expert_groups=nodes, topk_groups=nodes)
    accepted = set(rule_options(name))
    # a setting the rule does not take is one it need not honour (checked above): leave it out
    options = {key: value for key, value in settings.items() if key in accepted and value is not None}
    options.update(routing.options)
    return make_router(name, model.num_experts, routing.top_k or model.top_k, routing.capacity_factor, **options)


def warm_up_bias(router: Router, scenario: Scenario, layer: int = 0, tokens: int = 2048) -> bool:
    """Bring a bias_balanced router's bias near its steady state for MoE layer `layer`; True if it did.

    A fresh bias of zero routes exactly like plain top-k, while a trained model's bias has
    settled. The warm-up runs `simulation.bias_warmup_steps` updates on other batches of
    the same layer's scores (synthetic: the same expert popularity, fresh token noise;
    trace: the recorded scores), with large steps first shrinking to the router's own
    rate, so the steady state takes a few dozen updates instead of the thousands that
    DeepSeek's gamma = 0.001 takes in training.
    """
    steps = scenario.simulation.bias_warmup_steps
    if not isinstance(router, BiasBalancedRouter) or not steps:
        return False

    def warm() -> torch.Tensor:
        configured = router.bias_update_rate
        try:
            for step in range(steps):
                logits = scores_for_layers(scenario, [layer], tokens, step=1 + step)[0].logits
                router.bias_update_rate = max(configured, 0.1 * 0.9**step)
                router.update_bias(router.route(logits).expert_load)
        finally:
            router.bias_update_rate = configured
        return router.bias.clone()

    # the same router on the same scores settles to the same bias: a plan's layouts and an iteration's token
    # grid share one warm-up (most of the time they took)
    router.bias = reuse(_warmed_biases, _warm_up_key(router, scenario, layer, tokens), WARMED_BIASES, warm).clone()
    return True


WARMED_BIASES = 64
"""Warmed-up biases kept: one per (router, layer, score settings, EP size) a run meets."""
_warmed_biases: "OrderedDict[str, torch.Tensor]" = OrderedDict()


def _warm_up_key(router: Router, scenario: Scenario, layer: int, tokens: int) -> str:
    """What a warm-up's result depends on: the router's settings and starting bias, and what its scores are drawn
    from (the model, the workload's score settings or trace file, the EP size, the seed, the steps)."""
    settings = {name: value for name, value in vars(router).items() if isinstance(value, (bool, int, float, str))}
    workload = scenario.workload
    trace = workload.trace_path if workload.scores == "trace" else None
    stamp = list(os.stat(trace)[6:9]) if trace and os.path.exists(trace) else None
    return json.dumps(
        [
            type(router).__name__,
            settings,
            router.bias.tolist(),
            scenario.model.model_dump(mode="json"),
            workload.model_dump(mode="json", exclude={"global_batch_size"}),
            scenario.parallelism.ep_size,
            scenario.seed,
            scenario.simulation.bias_warmup_steps,
            layer,
            tokens,
            stamp,
        ],
        sort_keys=True,
    )


def tokens_per_layer(scenario: Scenario) -> int:
    """Tokens one expert-parallel group routes per MoE layer per micro-batch: one micro-batch per EP rank."""
    workload = scenario.workload
    return workload.micro_batch_size * workload.seq_len * scenario.parallelism.ep_size


def scores_for_layers(scenario: Scenario, layer_ids: list[int], num_tokens: int, step: int = 0) -> list[RouterScores]:
    """Router scores of the given MoE layers: synthetic (`num_tokens` each), or from the trace file (cycled).

    Tokens start on the expert-parallel ranks in equal contiguous blocks; a trace's own
    source ranks are kept when they fit the group.
    """
    workload, model = scenario.workload, scenario.model
    ranks = scenario.parallelism.ep_size
    if workload.scores == "trace":
        assert workload.trace_path is not None
        recorded = load_trace(workload.trace_path)
        if recorded[0].num_experts != model.num_experts:
            raise TraceError(
                f"{workload.trace_path}: the trace has {recorded[0].num_experts} experts, the model {model.num_experts}"
            )
        chosen = [recorded[index % len(recorded)] for index in layer_ids]
        return [
            scores
            if int(scores.source_rank.max()) < ranks and int(scores.source_rank.max()) > 0
            else RouterScores(
                scores.logits,
                scores.token_ids,
                (torch.arange(scores.num_tokens) * ranks) // scores.num_tokens,
                scores.layer,
            )
            for scores in chosen
        ]
    generator = SyntheticScores(
        num_tokens=num_tokens,
        num_experts=model.num_experts,
        num_layers=max(layer_ids) + 1,
        expert_popularity_skew=workload.expert_popularity_skew,
        score_temperature=workload.score_temperature,
        layer_correlation=workload.layer_correlation,
        step_drift=workload.step_drift,
        token_id_skew=workload.token_id_skew,
        vocab_size=model.vocab_size,
        num_ranks=ranks,
        seed=scenario.seed,
    )
    return [generator.layer(step, layer) for layer in layer_ids]


def scores_for_scenario(
    scenario: Scenario, step: int = 0, layers: int = 1, num_tokens: Optional[int] = None
) -> list[RouterScores]:
    """Router scores for the first `layers` MoE layers: synthetic, or read from the trace file."""
    return scores_for_layers(scenario, list(range(layers)), num_tokens or tokens_per_layer(scenario), step)


@dataclass(frozen=True)
class RuleReport:
    """One rule's routing of one layer: its metrics and how long routing took."""

    strategy: str
    layer: int
    metrics: RoutingMetrics
    routing_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "layer": self.layer,
            "routing_seconds": self.routing_seconds,
            **self.metrics.as_dict(),
        }


def compare_rules(scenario: Scenario, strategies: list[str], scores: list[RouterScores]) -> list[RuleReport]:
    """Route the same scores under each rule and measure the result."""
    placement = Placement(scenario.model.num_experts, scenario.parallelism.ep_size, scenario.cluster.gpus_per_node)
    bytes_per_token = scenario.model.hidden_size * scenario.workload.precision.activation_bytes
    reports = []
    for strategy in strategies:
        for layer_scores in scores:
            router = router_for_scenario(scenario, strategy)
            warm_up_bias(router, scenario, layer_scores.layer)
            logits = layer_scores.logits
            if getattr(router, "expected_columns_offset", 0):
                logits = _with_first_gate(logits)
            started = time.perf_counter()
            assignment = router.route(logits, layer_scores.token_ids)
            elapsed = time.perf_counter() - started
            metrics = summarize_routing(
                assignment,
                layer_scores.logits,
                router.top_k,
                expert_rank=placement.expert_rank,
                source_rank=layer_scores.source_rank,
                num_ranks=placement.ep_size,
                gpus_per_node=placement.gpus_per_node,
                bytes_per_token=bytes_per_token,
            )
            reports.append(RuleReport(strategy, layer_scores.layer, metrics, elapsed))
    return reports


def _with_first_gate(logits: Any) -> Any:
    """Scores for two-level dense-or-experts gating: a first column for the binary gate (log-mean-exp of the rest)."""
    gate = torch.logsumexp(logits, dim=1, keepdim=True) - math.log(logits.shape[1])
    return torch.cat([gate, logits], dim=1)
