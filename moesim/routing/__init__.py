"""Routing rules: `Router.route(scores) -> Assignment`, shared by the simulator and the executor."""

from moesim.routing.names import ROUTING_STRATEGIES, RoutingStrategy

__all__ = ["ROUTING_STRATEGIES", "RoutingStrategy"]
