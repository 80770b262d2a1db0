"""Routing inside the simulator: per-layer expert loads and all-to-all traffic of one EP group.

The routers of `moesim.routing` run on the scenario's router scores (synthetic or a
trace). To keep large clusters fast, at most `simulation.max_routed_tokens` tokens are
routed per layer and loads and bytes are scaled up to the group's token count, and at
most `simulation.max_routed_layers` distinct layers are routed per stage (further MoE
layers reuse them in turn); both shortcuts are listed in the result's notes.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from moesim.cluster.placement import Placement
from moesim.reuse import reuse
from moesim.routing.capacity import expert_capacity
from moesim.routing.metrics import rank_traffic_tokens
from moesim.routing.router import Router
from moesim.scenario import Scenario
from moesim.sim.collectives import Traffic
from moesim.sim.scenario_routing import router_for_scenario, scores_for_layers, warm_up_bias


@dataclass(frozen=True)
class LayerRouting:
    """What one MoE layer's routing means for the EP group, scaled to the real token count."""

    expert_tokens: np.ndarray  # [num_experts] tokens each expert processes
    traffic: Traffic
    dropped_pairs: float
    requested_pairs: float
    load_imbalance: float
    rank_rows: list[np.ndarray]  # per rank: tokens of each expert copy it holds (one grouped GEMM)


def ep_group_ranks(scenario: Scenario) -> np.ndarray:
    """Global ranks of the first expert-parallel group.

    Megatron-Core's MoE parallel folding forms expert groups from consecutive ranks of the
    tensor x context x data block, expert tensor parallelism innermost: an EP group of 8 with
    TP 2 and ETP 1 is ranks 0-7 (one node, NVLink only); with ETP 2 it is ranks 0, 2, ..., 14.
    """
    par = scenario.parallelism
    return np.arange(par.ep_size) * par.expert_tp_size  # expert tensor parallelism innermost, then EP


ROUTING_CACHE_SIZE = 32
"""Routed layers kept for reuse: a plan's layouts share a handful of (EP size, tokens) routings."""

NOT_ROUTING_SETTINGS = (
    "alltoall_algorithm",
    "moe_kernels",
    "allreduce_algorithm",
    "overlap_shared_experts",
    "overlap_grad_reduce",
    "alltoall_overlap",
    "comm_sms",
    "moe_chunks",
    "cost_profile",
)
"""Simulation settings that change what the routed tokens cost, not where they go: left out of the routing's key
(a serving deployment's DeepEP normal and low-latency passes share one routing)."""

_routing_cache: OrderedDict[str, tuple[list[LayerRouting], list[str]]] = OrderedDict()


def routing_cache_key(scenario: Scenario, moe_layer_ids: list[int], group_tokens: int, gpus_per_node: int) -> str:
    """What routing an EP group depends on: model, routing, workload, simulation settings, seed and the group's
    ranks (not the GPU, the node count or the other parallel sizes); a trace by its file's size and modification
    time."""
    document = scenario.model_dump(
        mode="json",
        include={"model", "routing", "workload", "simulation", "seed"},
        exclude={"workload": {"global_batch_size"}, "simulation": set(NOT_ROUTING_SETTINGS)},
    )
    trace = scenario.workload.trace_path if scenario.workload.scores == "trace" else None
    stamp = list(os.stat(trace)[6:9]) if trace and os.path.exists(trace) else None
    return json.dumps(
        [document, ep_group_ranks(scenario).tolist(), moe_layer_ids, group_tokens, gpus_per_node, stamp], sort_keys=True
    )


def route_layers(
    scenario: Scenario, moe_layer_ids: list[int], group_tokens: int, gpus_per_node: int
) -> tuple[list[LayerRouting], list[str]]:
    """Routing of the first `max_routed_layers` of the listed MoE layers for a group of `group_tokens` tokens
    (computed once per `routing_cache_key`; treat the result as read-only).

    MoE layer number i of the model uses entry i % len(result).
    """
    key = routing_cache_key(scenario, moe_layer_ids, group_tokens, gpus_per_node)
    routed, notes = reuse(
        _routing_cache,
        key,
        ROUTING_CACHE_SIZE,
        lambda: _route_layers(scenario, moe_layer_ids, group_tokens, gpus_per_node),
    )
    return routed, list(notes)


def _route_layers(
    scenario: Scenario, moe_layer_ids: list[int], group_tokens: int, gpus_per_node: int
) -> tuple[list[LayerRouting], list[str]]:
    model, workload, sim = scenario.model, scenario.workload, scenario.simulation
    notes: list[str] = []
    if not moe_layer_ids:
        return [], notes
    ep = scenario.parallelism.ep_size
    placement = Placement(model.num_experts, ep, gpus_per_node)
    ranks = ep_group_ranks(scenario)
    nodes = ranks // gpus_per_node
    node_index = np.unique(nodes, return_inverse=True)[1]
    expert_node = torch.from_numpy(node_index[placement.expert_rank.numpy()])
    bytes_per_token = workload.precision.token_bytes(model.hidden_size, "dispatch")
    if scenario.routing.strategy == "bias_balanced" and sim.bias_warmup_steps:
        notes.append(f"bias_balanced: each routed layer's bias warmed up over {sim.bias_warmup_steps} updates")

    distinct = moe_layer_ids[: distinct_routed_layers(scenario)]
    scores = scores_for_layers(scenario, distinct, min(group_tokens, sim.max_routed_tokens))
    sample = scores[0].num_tokens
    scale = group_tokens / sample
    if scale > 1:
        notes.append(
            f"routing: {sample:,} of {group_tokens:,} tokens routed per layer, loads and bytes scaled x{scale:.1f}"
        )
    if len(moe_layer_ids) > len(distinct):
        notes.append(
            f"routing: {len(distinct)} distinct layers routed, reused in turn for all {len(moe_layer_ids)} MoE layers"
        )
    if sim.redundant_experts:
        notes.append(
            f"placement: {sim.redundant_experts} redundant copies of the hottest experts per layer, placed with "
            "that layer's own loads (an ideal load balancer)"
        )
    routed = []
    num_nodes = int(node_index.max()) + 1
    routing = scenario.routing
    padded_capacity = None
    if routing.pad_to_capacity:
        top_k = routing.top_k or model.top_k
        padded_capacity = float(expert_capacity(group_tokens, model.num_experts, top_k, routing.capacity_factor or 1.0))
        notes.append(
            f"routing: every expert's input padded to its capacity ({padded_capacity:,.0f} slots), "
            "all-to-all buffers capacity-sized"
        )
    for layer_id, layer_scores in zip(distinct, scores):
        router: Router = router_for_scenario(scenario)  # each MoE layer has its own router state (bias)
        warm_up_bias(router, scenario, layer_id)
        assignment = router.route(layer_scores.logits, layer_scores.token_ids)
        source = layer_scores.source_rank.clamp(max=ep - 1)
        load = assignment.expert_load.double().numpy() * scale
        layer_placement = (
            placement.with_hot_replicas(load, sim.redundant_experts) if sim.redundant_experts else placement
        )
        if padded_capacity is not None:
            rank_tokens, node_tokens, rank_rows = padded_slots(
                padded_capacity, layer_placement.shares(), node_index, num_nodes
            )
        elif sim.redundant_experts:
            share = layer_placement.shares()
            # each (token, expert) pair to one of the expert's copies, then deduplicated per rank and per node
            slot_rank = layer_placement.slot_ranks(assignment.expert_ids)
            slot_node = torch.from_numpy(node_index)[slot_rank]
            rank_tokens = rank_traffic_tokens(assignment, slot_rank, source, ep).double().numpy() * scale
            node_tokens = rank_traffic_tokens(assignment, slot_node, source, ep, num_nodes).double().numpy() * scale
            rank_rows = [load[share[:, rank] > 0] * share[share[:, rank] > 0, rank] for rank in range(ep)]
        else:
            rank_tokens = rank_traffic_tokens(assignment, placement.expert_rank, source, ep).double().numpy() * scale
            node_tokens = rank_traffic_tokens(assignment, expert_node, source, ep, num_nodes).double().numpy() * scale
            rank_rows = list(load.reshape(ep, placement.experts_per_rank))
        routed.append(
            LayerRouting(
                expert_tokens=load,
                traffic=Traffic(ranks, rank_tokens * bytes_per_token, node_tokens * bytes_per_token),
                dropped_pairs=assignment.num_dropped * scale,
                requested_pairs=assignment.num_requested * scale,
                load_imbalance=float(load.max() / load.mean()) if load.mean() > 0 else 1.0,
                rank_rows=rank_rows,
            )
        )
    return routed, notes


def padded_slots(
    capacity: float, share: np.ndarray, node_index: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Token slots each source rank sends to each rank and node, and each rank's expert rows, when every expert's
    input is padded to its capacity (GShard's einsum dispatch, Megatron-Core's pad-to-capacity): every source sends
    capacity / ep slots per expert whatever it routed, split over the expert's copies (`share`: experts x ranks)."""
    ep = share.shape[1]
    rank_tokens = np.full((ep, share.shape[0]), capacity / ep) @ share
    node_tokens = np.zeros((ep, num_nodes))
    np.add.at(node_tokens.T, node_index, rank_tokens.T)  # padding is never deduplicated per node
    rank_rows = [capacity * share[share[:, rank] > 0, rank] for rank in range(ep)]
    return rank_tokens, node_tokens, rank_rows


def routing_summary(routing: list[LayerRouting]) -> tuple[float, float]:
    """The routed layers' drop rate (dropped over requested token-expert pairs) and mean load imbalance."""
    if not routing:
        return 0.0, 1.0
    dropped = sum(layer.dropped_pairs for layer in routing)
    requested = sum(layer.requested_pairs for layer in routing)
    return (dropped / requested if requested else 0.0), float(np.mean([layer.load_imbalance for layer in routing]))


def distinct_routed_layers(scenario: Scenario) -> int:
    """MoE layers routed apart (the others reuse them in turn): `simulation.max_routed_layers`, or the network mode's
    default, 4 with `full` and 1 with `fast` (a planner's fast search routes one)."""
    sim = scenario.simulation
    return sim.max_routed_layers or (4 if sim.network_mode == "full" else 1)
