"""The network solver against closed forms and networkx shortest paths."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.sim.network import FlowSet, fluid_completion_times, max_min_rates, transfer_time

NVLINK = 450e9  # bytes/s, one direction (H100 SXM)
NIC = 400e9 / 8  # 400 Gb/s


def topology(**overrides: object) -> Topology:
    settings = dict(
        num_nodes=1,
        gpus_per_node=8,
        scale_up_bytes_per_s=NVLINK,
        nics_per_node=8,
        nic_bytes_per_s=NIC,
        kind="rail_optimized",
        scale_up_latency_s=2e-6,
        network_latency_s=5e-6,
    )
    settings.update(overrides)
    return Topology(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_uniform_alltoall_one_switch_matches_closed_form(mode: str, ranks: int) -> None:
    """alpha + bytes x (n-1)/n / bandwidth, where bytes is each rank's whole send buffer."""
    send_buffer = 64e6
    matrix = np.full((ranks, ranks), send_buffer / ranks)
    result = transfer_time(topology(gpus_per_node=ranks), np.arange(ranks), matrix, mode)
    expected = 2e-6 + send_buffer * (ranks - 1) / ranks / NVLINK
    assert result.seconds == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_uniform_alltoall_across_nodes_limited_by_nics(mode: str) -> None:
    """2 nodes x 8 GPUs, one NIC each: the cross-node half of the buffer goes at NIC speed."""
    send_buffer = 64e6
    ranks = 16
    matrix = np.full((ranks, ranks), send_buffer / ranks)
    result = transfer_time(topology(num_nodes=2, kind="single_switch"), np.arange(ranks), matrix, mode)
    expected = 5e-6 + (send_buffer / 2) / NIC  # 8 of 16 destinations are remote, NIC is the slower link
    assert result.seconds == pytest.approx(expected, rel=0.01)
    assert result.bytes_across_nodes == pytest.approx(ranks * send_buffer / 2)


def test_hot_receiver_is_bounded_by_its_own_link() -> None:
    """Every rank sends 10 MB to rank 0 and 1 MB elsewhere: rank 0's ingress decides."""
    ranks = 8
    matrix = np.full((ranks, ranks), 1e6)
    matrix[:, 0] = 10e6
    result = transfer_time(topology(), np.arange(ranks), matrix, "full")
    assert result.seconds == pytest.approx(2e-6 + 7 * 10e6 / NVLINK, rel=0.01)
    fast = transfer_time(topology(), np.arange(ranks), matrix, "fast")
    assert fast.seconds == pytest.approx(result.seconds, rel=0.01)


def test_oversubscribed_spine_slows_cross_leaf_traffic_by_the_ratio() -> None:
    """Fat tree, one node per leaf: all cross-node traffic crosses the spine."""
    ranks = 32
    matrix = np.full((ranks, ranks), 1e6)
    np.fill_diagonal(matrix, 0)
    same_node = (np.arange(ranks)[:, None] // 8) == (np.arange(ranks)[None, :] // 8)
    matrix[same_node] = 0  # only cross-node traffic
    base = topology(num_nodes=4, kind="fat_tree", nodes_per_leaf=1)
    times = {
        ratio: transfer_time(replace(base, oversubscription=ratio), np.arange(ranks), matrix, "full").seconds - 5e-6
        for ratio in (1.0, 2.0, 4.0)
    }
    assert times[2.0] == pytest.approx(2 * times[1.0], rel=0.01)
    assert times[4.0] == pytest.approx(4 * times[1.0], rel=0.01)


def test_max_min_fair_rates_by_hand() -> None:
    """Link 0 (10 B/s) carries flows a, b; link 1 (4 B/s) carries b, c: b gets 2, c 2, a 8."""
    flows = FlowSet(3, np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), np.array([10.0, 4.0]))
    rates = max_min_rates(flows, np.ones(3, dtype=bool))
    assert rates.tolist() == pytest.approx([8.0, 2.0, 2.0])
    # after c finishes, b gets the rest of link 1 (4) and a the rest of link 0 (6)
    finish = fluid_completion_times(flows, np.array([8.0, 8.0, 2.0]))
    # c: 2 B at 2 B/s -> 1 s; then b has 6 B left at 4 B/s -> 2.5 s; a: 8 B at 8 B/s -> 1 s
    assert finish.tolist() == pytest.approx([1.0, 2.5, 1.0])


def test_fast_mode_is_a_lower_bound() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        matrix = rng.exponential(1e6, size=(16, 16))
        topo = topology(num_nodes=2, nics_per_node=2, kind="fat_tree", nodes_per_leaf=1, oversubscription=2.0)
        full = transfer_time(topo, np.arange(16), matrix, "full").seconds
        fast = transfer_time(topo, np.arange(16), matrix, "fast").seconds
        assert fast <= full * (1 + 1e-9)


def test_doubling_bandwidth_never_slows() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.exponential(1e6, size=(16, 16))
    topo = topology(num_nodes=2, kind="fat_tree", nodes_per_leaf=1, oversubscription=3.0)
    slow = transfer_time(topo, np.arange(16), matrix, "full").seconds
    quick = transfer_time(topo.with_bandwidth_scale(2.0), np.arange(16), matrix, "full").seconds
    assert quick <= slow


@pytest.mark.parametrize("kind", ["rail_optimized", "fat_tree", "single_switch"])
def test_flow_links_follow_networkx_shortest_paths(kind: str) -> None:
    topo = topology(num_nodes=4, gpus_per_node=4, nics_per_node=2, kind=kind, nodes_per_leaf=2)
    graph = topo.to_networkx()
    sources, destinations = np.nonzero(~np.eye(topo.world_size, dtype=bool))
    flow_of, link_of = topo.flow_links(sources, destinations)
    for flow, (src, dst) in enumerate(zip(sources, destinations)):
        path = nx.shortest_path(graph, f"gpu{src}", f"gpu{dst}", weight="weight")
        graph_links = {graph.edges[a, b]["link"] for a, b in zip(path, path[1:])} - {-1}
        assert graph_links == set(link_of[flow_of == flow].tolist()), (src, dst, path)


def test_time_stepped_sharing_stays_within_one_percent_of_exact() -> None:
    rng = np.random.default_rng(2)
    topo = topology(num_nodes=2, nics_per_node=4, kind="fat_tree", nodes_per_leaf=1, oversubscription=2.0)
    ranks = np.arange(16)
    for _ in range(3):
        matrix = rng.exponential(1e6, size=(16, 16))
        src, dst = np.nonzero(~np.eye(16, dtype=bool))
        flow_of, link_of = topo.flow_links(src, dst)
        flows = FlowSet(src.size, flow_of, link_of, topo.link_capacity(ranks))
        exact = fluid_completion_times(flows, matrix[src, dst], resolution=0).max()
        stepped = fluid_completion_times(flows, matrix[src, dst]).max()
        assert stepped == pytest.approx(exact, rel=0.01)
