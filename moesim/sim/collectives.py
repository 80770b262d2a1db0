"""Collectives on the topology: MoE all-to-all (three algorithms) and gradient all-reduce.

`Traffic` is what one dispatch moves: bytes from each rank of an expert-parallel group
to each other rank (a token's hidden vector once per destination rank), and, for
node-deduplicating algorithms, bytes from each rank to each destination node (once per
node). The combine moves the same amounts back (the transpose).

All-to-all algorithms:
* `flat` — every rank sends straight to every rank (NCCL alltoall).
* `hierarchical` — Tutel / DeepSpeed two-stage: first inside each node, GPU (n, i)
  hands GPU (n, j) everything bound for local index j on any node; then GPUs of the
  same local index exchange across nodes (one rail each). The stages run one after the
  other.
* `deepep` — DeepEP-style node deduplication: a token crosses the network once per
  destination node, to the GPU of its own rail there, which forwards it over NVLink to
  every GPU that needs it; RDMA and NVLink forwarding overlap, so the slower decides.
  On a GPU whose DeepEP kernels moesim has measured (`topology.deepep`), the time is the
  measured kernels' (`moesim.cluster.deepep_kernels`: a floor, SM-limited NVLink rates,
  the efficiency of a call that size) for the busiest rank's bytes; the links' flows
  still give the bytes moved.

All-reduce: ring (2(n-1)/n x bytes over the slowest member link) and hierarchical
(reduce-scatter in the node, all-reduce of 1/g of the data across nodes, all-gather in
the node); `auto` takes the faster, as NCCL's tuner would. Inside a node, on a GPU whose
nccl-tests tables moesim carries, NCCL's measured all-reduce, reduce-scatter and
all-gather replace the ring's arithmetic (`moesim.cluster.collective_tables`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from moesim.cluster.deepep_kernels import DEFAULT_SMS
from moesim.cluster.topology import Topology
from moesim.sim.network import TransferResult, transfer_time

ALLTOALL_ALGORITHMS = ("flat", "hierarchical", "deepep", "deepep_low_latency")


@dataclass(frozen=True)
class Traffic:
    """Bytes one dispatch moves inside an expert-parallel group."""

    ranks: np.ndarray  # global rank of each group member
    rank_bytes: np.ndarray  # [members, members]
    node_bytes: np.ndarray  # [members, nodes the group spans], deduplicated per destination node
    direction: str = "dispatch"

    def transposed(self, scale: float = 1.0) -> "Traffic":
        """The combine: the same tokens in the opposite direction, bytes x `scale` (its own precision)."""
        return Traffic(self.ranks, self.rank_bytes.T * scale, self.node_bytes * scale, "combine")


def _same_layout(topology: Topology, ranks: np.ndarray) -> bool:
    """Whether the group is whole nodes (needed by the two-stage algorithms)."""
    nodes = topology.node_of(ranks)
    counts = np.bincount(nodes)
    counts = counts[counts > 0]
    return bool(counts.size > 1 and np.all(counts == topology.gpus_per_node))


def deepep_volumes(topology: Topology, traffic: Traffic) -> tuple[float, float, float, int]:
    """(RDMA bytes, NVLink-stage bytes, NVLink link bytes, nodes) of the busiest rank in a DeepEP normal-kernel
    call: the bytes a rank sends to other nodes once per node or its rail receives from them, the tokens a rank
    receives or sends in all (its own included, as DeepEP's tests count them), and of those the ones that cross
    NVLink (the link bytes: its own left out)."""
    node_index = np.unique(topology.node_of(traffic.ranks), return_inverse=True)[1]
    nodes = int(node_index.max()) + 1
    members = np.arange(traffic.ranks.size)
    remote = traffic.node_bytes.copy()
    remote[members, node_index] = 0.0
    rail = np.asarray(traffic.ranks) % topology.gpus_per_node
    received = np.zeros((nodes, topology.gpus_per_node))
    np.add.at(received, (np.broadcast_to(np.arange(nodes), remote.shape), rail[:, None]), remote)
    rdma = max(float(remote.sum(axis=1).max()), float(received.max()))
    rank_bytes = traffic.rank_bytes
    nvlink = max(float(rank_bytes.sum(axis=0).max()), float(rank_bytes.sum(axis=1).max()))
    own = np.diag(rank_bytes)
    link = max(float((rank_bytes.sum(axis=0) - own).max()), float((rank_bytes.sum(axis=1) - own).max()))
    return rdma, nvlink, link, nodes


def _measured_deepep(topology: Topology, traffic: Traffic, sms: int, links: TransferResult) -> TransferResult:
    """The link model's bytes with the measured kernels' time."""
    rdma, nvlink, link, nodes = deepep_volumes(topology, traffic)
    seconds = topology.deepep.normal_seconds(
        traffic.direction, nodes, sms, rdma, nvlink, link, topology.nic_share_bytes_per_s, topology.scale_up_bytes_per_s
    )
    floor = topology.deepep.normal[traffic.direction].floor_s
    return TransferResult(seconds, links.bytes_total, links.bytes_across_nodes, min(seconds, min(floor.values())))


def all_to_all(
    topology: Topology, traffic: Traffic, algorithm: str = "flat", mode: str = "full", sms: int = DEFAULT_SMS
) -> TransferResult:
    """Time of one alltoallv with the given algorithm (`sms`: the SMs DeepEP's normal kernels hold)."""
    if algorithm not in ALLTOALL_ALGORITHMS:
        raise ValueError(f"all-to-all algorithm must be one of {ALLTOALL_ALGORITHMS}, got {algorithm!r}")
    ranks = traffic.ranks
    if algorithm == "deepep_low_latency":
        raise ValueError("deepep_low_latency counts (token, expert) copies: use low_latency_all_to_all")
    if algorithm == "deepep" and topology.deepep is not None and ranks.size > 1:
        links = all_to_all(replace(topology, deepep=None), traffic, algorithm, "fast")  # bytes only
        return _measured_deepep(topology, traffic, sms, links)
    if algorithm == "flat" or not _same_layout(topology, ranks):
        return transfer_time(topology, ranks, traffic.rank_bytes, mode, nccl=algorithm != "deepep")
    gpus = topology.gpus_per_node
    members = len(ranks)
    nodes = members // gpus
    # index [source node, source local, destination node, destination local]
    grid = traffic.rank_bytes.reshape(nodes, gpus, nodes, gpus)
    if algorithm == "hierarchical":
        stage_one = np.zeros((members, members))
        gathered = grid.sum(axis=2)  # [n, i, j]: everything (n, i) has for local index j anywhere
        for node in range(nodes):  # one node at a time (nodes, not tokens)
            block = slice(node * gpus, (node + 1) * gpus)
            stage_one[block, block] = gathered[node]
        stage_two = np.zeros((members, members))
        crossing = grid.sum(axis=1)  # [n, m, j]: node n's data for (m, j), now held by (n, j)
        for local in range(gpus):
            rail = np.arange(nodes) * gpus + local
            stage_two[np.ix_(rail, rail)] = crossing[:, :, local]
        first = transfer_time(topology, ranks, stage_one, mode, nccl=True)
        second = transfer_time(topology, ranks, stage_two, mode, nccl=True)
        return TransferResult(
            first.seconds + second.seconds,
            first.bytes_total + second.bytes_total,
            second.bytes_across_nodes,
            first.latency_seconds + second.latency_seconds,
        )
    # deepep: RDMA once per (token, destination node) to the same-rail GPU there, then NVLink fan-out
    rdma = np.zeros((members, members))
    for local in range(gpus):  # rails, not tokens
        rail = np.arange(nodes) * gpus + local
        rdma[np.ix_(rail, rail)] = traffic.node_bytes[rail]
    np.fill_diagonal(rdma, 0.0)  # a node's own tokens do not cross the network
    nvlink = np.zeros((members, members))
    arriving = grid.sum(axis=0)  # [i, m, j]: bytes that reach (m, i) (by RDMA or locally) bound for (m, j)
    for node in range(nodes):
        block = slice(node * gpus, (node + 1) * gpus)
        nvlink[block, block] = arriving[:, node, :]
    network = transfer_time(topology, ranks, rdma, mode)
    fan_out = transfer_time(topology, ranks, nvlink, mode)
    return TransferResult(
        max(network.seconds, fan_out.seconds),
        network.bytes_total + fan_out.bytes_total,
        network.bytes_across_nodes,
        max(network.latency_seconds, fan_out.latency_seconds),
    )


def local_share(topology: Topology, traffic: Traffic) -> np.ndarray:
    """Per rank, the share of the tokens it receives that come from its own node (itself included)."""
    node = topology.node_of(traffic.ranks)
    same = node[:, None] == node[None, :]
    received = traffic.rank_bytes.sum(axis=0)
    return np.divide((traffic.rank_bytes * same).sum(axis=0), received, out=np.zeros_like(received), where=received > 0)


def low_latency_all_to_all(
    topology: Topology,
    copies_in: np.ndarray,
    copies_out: np.ndarray,
    token_bytes: float,
    local_in: Optional[np.ndarray] = None,
    direction: str = "dispatch",
    nvlink: bool = True,
) -> TransferResult:
    """DeepEP's low-latency kernels (decode): every (token, expert) copy is its own message, with no deduplication
    per node or rank. `copies_in` / `copies_out`: the copies each rank receives / sends; `local_in`: the share of a
    rank's received copies that come from its own node (0 where not given).

    On a GPU whose kernels moesim has measured (`topology.deepep`), the time is their floor at that many ranks
    (it grows with the peers a rank talks to) plus the busiest rank's copies at the measured rates: to its own
    node over NVLink (`nvlink`, DeepEP's default since 2025-06) or everything over RDMA (the first kernels).
    Elsewhere: the network latency plus the busiest NIC's bytes, in or out, at its line rate."""
    sent, received = copies_out * token_bytes, copies_in * token_bytes
    total = float(sent.sum())
    kernels = topology.deepep
    if kernels is None:
        seconds = topology.network_latency_s + max(float(sent.max()), float(received.max())) / topology.nic_bytes_per_s
        return TransferResult(seconds, total, total, topology.network_latency_s)
    local = np.zeros_like(received) if local_in is None or not nvlink else np.asarray(local_in, float)
    rdma, nvl = (copies * token_bytes for copies in low_latency_copies(copies_in, copies_out, local))
    ranks = received.size
    seconds = kernels.low_latency_seconds(
        direction, ranks, rdma, nvl, topology.nic_share_bytes_per_s, topology.scale_up_bytes_per_s
    )
    across = float((received * (1 - local)).sum())
    return TransferResult(seconds, total, across, kernels.low_latency[direction].floor(ranks))


def low_latency_copies(copies_in: np.ndarray, copies_out: np.ndarray, local: np.ndarray) -> tuple[float, float]:
    """(RDMA, NVLink) copies of the busiest rank in a low-latency call: received from other nodes or its own
    (`local`: each rank's share from its own node), or sent, senders spreading theirs like the receivers' mean."""
    share = float(np.mean(local))
    sent = float(np.max(copies_out))
    rdma = max(float((copies_in * (1 - local)).max()), sent * (1 - share))
    nvl = max(float((copies_in * local).max()), sent * share)
    return rdma, nvl


def all_reduce_time(topology: Topology, ranks: np.ndarray, size_bytes: float, algorithm: str = "auto") -> float:
    """Seconds for an all-reduce of `size_bytes` over `ranks` (ring, hierarchical or the faster)."""
    ranks = np.asarray(ranks, np.int64)
    members = ranks.size
    if members <= 1 or size_bytes <= 0:
        return 0.0
    nodes = np.unique(topology.node_of(ranks))
    per_node = members // nodes.size
    measured = topology.collectives
    if measured is not None and nodes.size == 1:  # NCCL inside a node, as measured
        return measured.seconds("all_reduce", members, size_bytes, topology.scale_up_bytes_per_s)
    network_bandwidth, alpha = _network_share(topology, ranks)
    ring = _ring_seconds(topology, ranks, size_bytes, passes=2)
    if algorithm == "ring" or nodes.size == 1 or per_node == 1:
        return ring
    if measured is not None:  # reduce-scatter and all-gather inside each node, as NCCL measured them
        link = topology.scale_up_bytes_per_s
        inside = measured.seconds("reduce_scatter", per_node, size_bytes, link) + measured.seconds(
            "all_gather", per_node, size_bytes, link
        )
    else:
        inside = (
            2 * (per_node - 1) / per_node * size_bytes / topology.scale_up_bytes_per_s
            + 2 * (per_node - 1) * topology.scale_up_latency_s
        )
    across = (
        2 * (nodes.size - 1) / nodes.size * (size_bytes / per_node) / network_bandwidth + 2 * (nodes.size - 1) * alpha
    )
    hierarchical = inside + across
    if algorithm == "hierarchical":
        return hierarchical
    if algorithm != "auto":
        raise ValueError(f"all-reduce algorithm must be 'ring', 'hierarchical' or 'auto', got {algorithm!r}")
    return min(ring, hierarchical)


def _network_share(topology: Topology, ranks: np.ndarray) -> tuple[float, float]:
    """A rank's share of its NIC across the leaves `ranks` span (oversubscribed above one leaf), and the network
    latency."""
    leaves = np.unique(topology.leaf_of_nic(topology.nic_of(ranks)))
    return (
        topology.nic_share_bytes_per_s / (topology.oversubscription if leaves.size > 1 else 1.0),
        topology.network_latency_s,
    )


def _ring_seconds(topology: Topology, ranks: np.ndarray, size_bytes: float, passes: int) -> float:
    """A ring over `ranks` moving (n - 1) / n of `size_bytes` `passes` times (2: all-reduce; 1: all-gather or
    reduce-scatter) at the slower of NVLink and the NIC share where it leaves a node, with each hop's latency."""
    members = ranks.size
    if np.unique(topology.node_of(ranks)).size == 1:
        bandwidth, alpha = topology.scale_up_bytes_per_s, topology.scale_up_latency_s
    else:
        network, alpha = _network_share(topology, ranks)
        bandwidth = min(topology.scale_up_bytes_per_s, network)
    return passes * ((members - 1) / members * size_bytes / bandwidth + (members - 1) * alpha)


def shard_collective_time(
    topology: Topology, ranks: np.ndarray, size_bytes: float, collective: str, algorithm: Optional[str] = None
) -> float:
    """Seconds for an all-gather or reduce-scatter over `ranks` whose whole buffer (the gathered output, the
    scattered input) is `size_bytes`: NCCL's measured curve inside a node where the GPU has one; across nodes half
    the all-reduce by `algorithm` where one is given (the two halves of it, so sharding moves what the all-reduce
    moved), else a ring (half an all-reduce's traffic)."""
    if collective not in ("all_gather", "reduce_scatter"):
        raise ValueError(f"collective must be 'all_gather' or 'reduce_scatter', got {collective!r}")
    ranks = np.asarray(ranks, np.int64)
    if ranks.size <= 1 or size_bytes <= 0:
        return 0.0
    inside = np.unique(topology.node_of(ranks)).size == 1
    measured = topology.collectives
    if measured is not None and inside:
        return measured.seconds(collective, ranks.size, size_bytes, topology.scale_up_bytes_per_s)
    if algorithm is not None and not inside:
        return all_reduce_time(topology, ranks, size_bytes, algorithm) / 2
    return _ring_seconds(topology, ranks, size_bytes, passes=1)
