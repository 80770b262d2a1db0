"""Routing rules: `Router.route(scores) -> Assignment`, shared by the simulator and the executor.

    from moesim.routing import make_router, RULES
    router = make_router("top_k", num_experts=8, top_k=2, capacity_factor=1.25)
    assignment = router.route(logits)          # logits: [tokens, 8]
"""

from moesim.routing.assignment import Assignment
from moesim.routing.capacity import apply_capacity, expert_capacity
from moesim.routing.losses import router_z_loss, sequence_load_balancing_loss, switch_load_balancing_loss
from moesim.routing.metrics import RoutingMetrics, summarize_routing
from moesim.routing.names import ROUTING_STRATEGIES, RoutingStrategy
from moesim.routing.registry import RULES, make_router, rule_options
from moesim.routing.router import Router

__all__ = [
    "Assignment",
    "Router",
    "RULES",
    "ROUTING_STRATEGIES",
    "RoutingStrategy",
    "RoutingMetrics",
    "make_router",
    "rule_options",
    "expert_capacity",
    "apply_capacity",
    "summarize_routing",
    "switch_load_balancing_loss",
    "sequence_load_balancing_loss",
    "router_z_loss",
]
