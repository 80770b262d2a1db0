"""`make_router`: build any routing rule by name."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from moesim.errors import MoesimError, unknown_name_message
from moesim.routing.base import BaseRouter
from moesim.routing.bias_balanced import BiasBalancedRouter
from moesim.routing.expert_choice import ExpertChoiceRouter
from moesim.routing.forced import ForcedBalanceRouter
from moesim.routing.group_limited import GroupLimitedRouter
from moesim.routing.hashing import BalancedHashRouter, HashRouter
from moesim.routing.names import ROUTING_STRATEGIES
from moesim.routing.router import Router
from moesim.routing.sinkhorn import SinkhornRouter
from moesim.routing.topk import GShardTop2Router, NoisyTopKRouter, TopKRouter
from moesim.routing.two_level import TwoLevelRouter

_CLASSES: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (
        TopKRouter,
        NoisyTopKRouter,
        GShardTop2Router,
        ExpertChoiceRouter,
        BaseRouter,
        SinkhornRouter,
        HashRouter,
        BalancedHashRouter,
        BiasBalancedRouter,
        GroupLimitedRouter,
        TwoLevelRouter,
        ForcedBalanceRouter,
    )
}
assert tuple(_CLASSES) == ROUTING_STRATEGIES, "every strategy name a scenario accepts has a router"

RULES: tuple[str, ...] = ROUTING_STRATEGIES
"""Names accepted by `make_router` and by `routing.strategy` in a scenario."""


def rule_options(name: str) -> list[str]:
    """Keyword options a rule accepts (besides num_experts, top_k, capacity_factor)."""
    names: list[str] = []
    for cls in _CLASSES[name].__mro__:
        if cls is object or "__init__" not in cls.__dict__:
            continue
        for parameter in inspect.signature(cls.__init__).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and parameter.name not in (
                "self",
                "num_experts",
                "top_k",
                "capacity_factor",
            ):
                if parameter.name not in names:
                    names.append(parameter.name)
    return names


def make_router(
    name: str,
    num_experts: int,
    top_k: Optional[int] = None,
    capacity_factor: Optional[float] = None,
    **rule_options_: Any,
) -> Router:
    """A router for rule `name` (see `RULES`); bad names or options raise MoesimError.

    `top_k=None` takes the rule's own default (1, or 2 for `gshard_top2`).
    """
    if name not in _CLASSES:
        raise MoesimError(unknown_name_message("routing rule", name, list(RULES)))
    accepted = rule_options(name)
    unknown = [key for key in rule_options_ if key not in accepted]
    if unknown:
        raise MoesimError(
            f"routing rule '{name}' has no option {', '.join(map(repr, unknown))}; options: {', '.join(accepted)}"
        )
    try:
        if top_k is not None:
            rule_options_["top_k"] = top_k
        return _CLASSES[name](num_experts=num_experts, capacity_factor=capacity_factor, **rule_options_)
    except ValueError as error:
        raise MoesimError(f"routing rule '{name}': {error}") from None
