"""Routing rules: `Router.route(scores) -> Assignment`, shared by the simulator and the executor.

    from moesim.routing import make_router, RULES
    router = make_router("top_k", num_experts=8, top_k=2, capacity_factor=1.25)
    assignment = router.route(logits)          # logits: [tokens, 8]

The names below load on first use, so that importing `moesim.routing.names` (the rule
names a scenario validates against) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Assignment": "assignment",
    "apply_capacity": "capacity",
    "expert_capacity": "capacity",
    "router_z_loss": "losses",
    "sequence_load_balancing_loss": "losses",
    "switch_load_balancing_loss": "losses",
    "RoutingMetrics": "metrics",
    "summarize_routing": "metrics",
    "ROUTING_STRATEGIES": "names",
    "RoutingStrategy": "names",
    "RULES": "registry",
    "make_router": "registry",
    "rule_options": "rules",
    "Router": "router",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'moesim.routing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"moesim.routing.{_WHERE[name]}"), name)
