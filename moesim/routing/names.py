"""Names of the routing rules a scenario may ask for, and what each can honour, read from `rules.RULE_TABLE`."""

from __future__ import annotations

from typing import Literal

from moesim.routing.rules import RULE_TABLE

RoutingStrategy = Literal[tuple(rule.name for rule in RULE_TABLE)]  # type: ignore[valid-type]
"""A routing rule's name: one of `RULE_TABLE`'s."""

ROUTING_STRATEGIES: tuple[str, ...] = tuple(rule.name for rule in RULE_TABLE)

SCORE_FUNCTION_RULES = frozenset(rule.name for rule in RULE_TABLE if rule.score_function)
"""Rules that take a score function (softmax or sigmoid); the others define their own."""

SCORE_FREE_RULES = frozenset(rule.name for rule in RULE_TABLE if rule.score_free)
"""Rules that ignore the scores' values (so no score convention concerns them)."""

GROUP_RULES = frozenset(rule.name for rule in RULE_TABLE if rule.groups)
"""Rules that restrict a token to its best expert groups, scored by the model's group score."""

BIAS_RULES = frozenset(rule.name for rule in RULE_TABLE if rule.bias)
"""Rules that keep a per-expert correction bias for the choice (DeepSeek-V3)."""


def unhonoured_settings(
    strategy: str, score_function: str, num_expert_groups: int | None, topk_groups: int | None, correction_bias: bool
) -> list[str]:
    """The router settings of a model or scenario that `strategy` cannot honour, each with its fix.

    Weight conventions (renormalised top-k weights, routed scaling) are honoured by every
    rule; these are the ones that decide which experts are chosen. An empty list: the rule
    honours them all.
    """
    if strategy == "balanced":  # forced balance replaces the model's routing on purpose (a benchmark setting)
        return []
    problems = []
    if score_function != "softmax" and strategy not in SCORE_FUNCTION_RULES | SCORE_FREE_RULES:
        problems.append(
            f"{score_function} scores (set routing.score_function=softmax, or use one of "
            f"{', '.join(sorted(SCORE_FUNCTION_RULES))})"
        )
    if num_expert_groups and topk_groups and topk_groups < num_expert_groups and strategy not in GROUP_RULES:
        problems.append(
            f"expert groups (num_expert_groups {num_expert_groups}, topk_groups {topk_groups}; "
            f"set routing.num_expert_groups=1, or use {' or '.join(sorted(GROUP_RULES))})"
        )
    if correction_bias and strategy not in BIAS_RULES:
        problems.append(
            f"the correction bias (model.router_bias; set model.router_bias=false, or use "
            f"{' or '.join(sorted(BIAS_RULES))})"
        )
    return problems
