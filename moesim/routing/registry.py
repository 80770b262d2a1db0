"""`make_router`: build any routing rule by name, from the classes `rules.RULE_TABLE` names."""

from __future__ import annotations

import importlib
from typing import Any, Optional

from moesim.errors import MoesimError, unknown_name_message
from moesim.routing.router import Router
from moesim.routing.rules import RULE_TABLE, rule_options


def _implementation(where: str) -> type[Router]:
    module, name = where.split(":")
    return getattr(importlib.import_module(f"moesim.routing.{module}"), name)


_CLASSES: dict[str, type[Router]] = {rule.name: _implementation(rule.where) for rule in RULE_TABLE}
assert all(cls.name == name for name, cls in _CLASSES.items()), "every rule's class carries the rule's name"

RULES: tuple[str, ...] = tuple(_CLASSES)
"""Names accepted by `make_router` and by `routing.strategy` in a scenario (`rules.RULE_TABLE`'s)."""


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
