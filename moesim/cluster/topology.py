"""Cluster topology: the links a byte crosses between two GPUs, and the networkx graph they form.

Resources (directed links, each with a capacity in bytes/s):

* `up_out[r]`, `up_in[r]` — GPU r's scale-up port (NVLink / NVSwitch, one direction);
* `nic_out[n, j]`, `nic_in[n, j]` — NIC j of node n (GPUs share NICs when there are
  fewer NICs than GPUs: GPU i uses NIC i x nics / gpus);
* `leaf_up[l]`, `leaf_down[l]` — leaf l's uplinks to the spine layer, all spines
  together (ECMP spreads a leaf's flows evenly over its uplinks); capacity = the NIC
  ports on the leaf x NIC rate / oversubscription.

Paths: inside a node GPU -> NVSwitch -> GPU. Across nodes GPU -> NIC -> leaf ->
(spine -> leaf, when the two NICs hang off different leaves) -> NIC -> GPU.
`rail_optimized`: NIC j of every node connects to rail j's leaves, so traffic between
GPUs of the same local index stays on its rail, other traffic crosses the spine.
`fat_tree`: all NICs of `nodes_per_leaf` nodes share a leaf. `single_switch`: one
non-blocking switch, only the NICs limit.

`flow_links` gives every flow's links at once (numpy, no loop over flows);
`to_networkx` builds the same cluster as a graph for inspection and for checking the
fast path against shortest paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Optional

import networkx as nx
import numpy as np

from moesim.cluster.collective_tables import MeasuredCollectives, shipped
from moesim.cluster.deepep_kernels import DeepEPKernels, shipped_kernels
from moesim.cluster.network_profile import check_cluster_profile, profile_deepep

DEFAULT_NODES_PER_LEAF = {"rail_optimized": 32, "fat_tree": 4, "single_switch": 1 << 30}
DATASHEET_SCALE_UP_LATENCY_S = 2e-6
"""A message's latency inside a node where nothing measured says otherwise (`cluster.scale_up_latency_us` unset)."""


def measured_inside(cluster: Any) -> Optional[MeasuredCollectives]:
    """NCCL's measured collectives for a cluster's nodes: where `scale_up_collectives: measured`, the cluster's own
    profile (`network_profile`) or the shipped tables measure the GPU, and they measure a domain as large as its
    node (an NVL72 rack of GB200s, measured on 2 and 4, is not)."""
    if cluster.scale_up_collectives != "measured":
        return None
    measured = check_cluster_profile(cluster) or shipped(cluster.gpu.name)
    return measured if measured is not None and measured.covers(cluster.gpus_per_node) else None


@dataclass(frozen=True)
class Topology:
    """A cluster of `num_nodes` x `gpus_per_node` GPUs and its network."""

    num_nodes: int
    gpus_per_node: int
    scale_up_bytes_per_s: float
    nics_per_node: int
    nic_bytes_per_s: float
    kind: str = "rail_optimized"
    oversubscription: float = 1.0
    nodes_per_leaf: Optional[int] = None
    scale_up_latency_s: float = DATASHEET_SCALE_UP_LATENCY_S
    network_latency_s: float = 5e-6
    collectives: Optional[MeasuredCollectives] = field(default=None, compare=False, repr=False)
    """NCCL's measured collectives inside a node (latency and achieved rate by message size), or None: the link at
    `scale_up_bytes_per_s` and `scale_up_latency_s`."""
    deepep: Optional[DeepEPKernels] = field(default=None, compare=False, repr=False)
    """DeepEP's measured kernels (floors, SM-limited rates, small-call efficiency), or None: its all-to-alls at
    the link rates."""

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_NODES_PER_LEAF:
            raise ValueError(f"topology must be one of {sorted(DEFAULT_NODES_PER_LEAF)}, got {self.kind!r}")
        if self.oversubscription < 1:
            raise ValueError(f"oversubscription must be >= 1, got {self.oversubscription}")

    @classmethod
    def from_cluster(cls, cluster: Any) -> "Topology":
        """Build from a scenario's `ClusterSpec`."""
        return cls(
            num_nodes=cluster.num_nodes,
            gpus_per_node=cluster.gpus_per_node,
            scale_up_bytes_per_s=cluster.scale_up_gb_per_s * 1e9,
            nics_per_node=cluster.nics_per_node,
            nic_bytes_per_s=cluster.nic_gbps * 1e9 / 8,
            kind=cluster.topology,
            oversubscription=cluster.oversubscription,
            nodes_per_leaf=cluster.nodes_per_leaf,
            scale_up_latency_s=(
                DATASHEET_SCALE_UP_LATENCY_S
                if cluster.scale_up_latency_us is None
                else cluster.scale_up_latency_us * 1e-6
            ),
            network_latency_s=cluster.network_latency_us * 1e-6,
            collectives=measured_inside(cluster),
            deepep=(profile_deepep(cluster) or shipped_kernels(cluster.gpu.name))
            if cluster.deepep_kernels == "measured"
            else None,
        )

    def with_bandwidth_scale(self, factor: float) -> "Topology":
        """The same cluster with every link `factor` times faster."""
        return replace(
            self, scale_up_bytes_per_s=self.scale_up_bytes_per_s * factor, nic_bytes_per_s=self.nic_bytes_per_s * factor
        )

    # ------------------------------------------------------------ layout
    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def leaf_nodes(self) -> int:
        """Nodes whose NICs (of one rail, when rail-optimised) share a leaf."""
        return min(self.nodes_per_leaf or DEFAULT_NODES_PER_LEAF[self.kind], self.num_nodes)

    @property
    def leaves_per_rail(self) -> int:
        return -(-self.num_nodes // self.leaf_nodes)

    @property
    def num_leaves(self) -> int:
        if self.kind == "rail_optimized":
            return self.nics_per_node * self.leaves_per_rail
        if self.kind == "fat_tree":
            return self.leaves_per_rail
        return 1

    def node_of(self, ranks: np.ndarray) -> np.ndarray:
        return ranks // self.gpus_per_node

    @property
    def nic_share_bytes_per_s(self) -> float:
        """One GPU's share of its node's NICs (bytes/s)."""
        return self.nic_bytes_per_s * min(1.0, self.nics_per_node / self.gpus_per_node)

    def nic_of(self, ranks: np.ndarray) -> np.ndarray:
        """Global NIC index (node x nics_per_node + local NIC) each GPU uses."""
        local = (ranks % self.gpus_per_node) * self.nics_per_node // self.gpus_per_node
        return self.node_of(ranks) * self.nics_per_node + local

    def leaf_of_nic(self, nics: np.ndarray) -> np.ndarray:
        node, local = nics // self.nics_per_node, nics % self.nics_per_node
        if self.kind == "rail_optimized":
            return local * self.leaves_per_rail + node // self.leaf_nodes
        if self.kind == "fat_tree":
            return node // self.leaf_nodes
        return np.zeros_like(nics)

    # ------------------------------------------------------------ links
    @cached_property
    def _offsets(self) -> dict[str, int]:
        world, nics, leaves = self.world_size, self.num_nodes * self.nics_per_node, self.num_leaves
        sizes = {
            "up_out": world,
            "up_in": world,
            "nic_out": nics,
            "nic_in": nics,
            "leaf_up": leaves,
            "leaf_down": leaves,
        }
        offsets, start = {}, 0
        for name, size in sizes.items():
            offsets[name] = start
            start += size
        offsets["_total"] = start
        return offsets

    @property
    def scale_up_links(self) -> slice:
        """The scale-up ports' link indices, out and in."""
        return slice(self._offsets["up_out"], self._offsets["up_in"] + self.world_size)

    @property
    def num_links(self) -> int:
        return self._offsets["_total"]

    def link_capacity(self, ranks: Optional[np.ndarray] = None) -> np.ndarray:
        """Capacity of every link, bytes/s.

        Leaf uplinks get the share that belongs to `ranks` (the GPUs being simulated):
        other groups of GPUs under the same leaf are assumed to run the same collective
        at the same time, so each group has its own NICs' share of the uplinks.
        """
        offsets = self._offsets
        capacity = np.empty(self.num_links)
        world, nics = self.world_size, self.num_nodes * self.nics_per_node
        capacity[offsets["up_out"] : offsets["up_out"] + world] = self.scale_up_bytes_per_s
        capacity[offsets["up_in"] : offsets["up_in"] + world] = self.scale_up_bytes_per_s
        capacity[offsets["nic_out"] : offsets["nic_out"] + nics] = self.nic_bytes_per_s
        capacity[offsets["nic_in"] : offsets["nic_in"] + nics] = self.nic_bytes_per_s
        members = np.arange(world) if ranks is None else np.asarray(ranks)
        leaf_nics = np.unique(self.nic_of(members))
        ports = np.bincount(self.leaf_of_nic(leaf_nics), minlength=self.num_leaves).astype(float)
        uplink = np.maximum(ports, 1.0) * self.nic_bytes_per_s / self.oversubscription
        capacity[offsets["leaf_up"] : offsets["leaf_up"] + self.num_leaves] = uplink
        capacity[offsets["leaf_down"] : offsets["leaf_down"] + self.num_leaves] = uplink
        return capacity

    def flow_links(self, sources: np.ndarray, destinations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow index, link index) pairs for flows sources[i] -> destinations[i] (sources != destinations)."""
        sources, destinations = np.asarray(sources, np.int64), np.asarray(destinations, np.int64)
        offsets = self._offsets
        flows = np.arange(sources.size)
        same_node = self.node_of(sources) == self.node_of(destinations)
        parts_flow, parts_link = [], []

        local = flows[same_node]
        parts_flow += [local, local]
        parts_link += [offsets["up_out"] + sources[same_node], offsets["up_in"] + destinations[same_node]]

        remote = flows[~same_node]
        src_nic, dst_nic = self.nic_of(sources[~same_node]), self.nic_of(destinations[~same_node])
        parts_flow += [remote, remote]
        parts_link += [offsets["nic_out"] + src_nic, offsets["nic_in"] + dst_nic]
        src_leaf, dst_leaf = self.leaf_of_nic(src_nic), self.leaf_of_nic(dst_nic)
        crosses = src_leaf != dst_leaf
        parts_flow += [remote[crosses], remote[crosses]]
        parts_link += [offsets["leaf_up"] + src_leaf[crosses], offsets["leaf_down"] + dst_leaf[crosses]]
        return np.concatenate(parts_flow), np.concatenate(parts_link)

    def latency(self, sources: np.ndarray, destinations: np.ndarray) -> float:
        """Per-message latency of a collective: the network's when any flow leaves a node."""
        if np.asarray(sources).size == 0:
            return 0.0
        crosses = np.any(self.node_of(np.asarray(sources)) != self.node_of(np.asarray(destinations)))
        return self.network_latency_s if crosses else self.scale_up_latency_s

    # ------------------------------------------------------------ graph
    def to_networkx(self) -> Any:
        """The cluster as a directed networkx graph; edges carry `bandwidth` (bytes/s), `latency` (s) and `link`
        (resource id)."""
        graph = nx.DiGraph()
        offsets = self._offsets

        def connect(
            a: str, b: str, up_link: int, down_link: int, bandwidth: float, latency: float, weight: int = 1
        ) -> None:
            graph.add_edge(a, b, bandwidth=bandwidth, latency=latency, link=up_link, weight=weight)
            graph.add_edge(b, a, bandwidth=bandwidth, latency=latency, link=down_link, weight=weight)

        for rank in range(self.world_size):
            node = rank // self.gpus_per_node
            # weight 2: a path never relays through another GPU when the network has a direct route
            connect(
                f"gpu{rank}",
                f"nvswitch{node}",
                offsets["up_out"] + rank,
                offsets["up_in"] + rank,
                self.scale_up_bytes_per_s,
                self.scale_up_latency_s,
                weight=2,
            )
        for nic in range(self.num_nodes * self.nics_per_node):
            node = nic // self.nics_per_node
            gpus = [
                r
                for r in range(node * self.gpus_per_node, (node + 1) * self.gpus_per_node)
                if int(self.nic_of(np.array([r]))[0]) == nic
            ]
            for rank in gpus:  # PCIe: not a modelled bottleneck
                graph.add_edge(f"gpu{rank}", f"nic{nic}", bandwidth=float("inf"), latency=0.0, link=-1, weight=3)
                graph.add_edge(f"nic{nic}", f"gpu{rank}", bandwidth=float("inf"), latency=0.0, link=-1, weight=3)
            leaf = int(self.leaf_of_nic(np.array([nic]))[0])
            connect(
                f"nic{nic}",
                f"leaf{leaf}",
                offsets["nic_out"] + nic,
                offsets["nic_in"] + nic,
                self.nic_bytes_per_s,
                self.network_latency_s,
            )
        capacity = self.link_capacity()
        for leaf in range(self.num_leaves):
            connect(
                f"leaf{leaf}",
                "spine",
                offsets["leaf_up"] + leaf,
                offsets["leaf_down"] + leaf,
                float(capacity[offsets["leaf_up"] + leaf]),
                0.0,
            )
        return graph
