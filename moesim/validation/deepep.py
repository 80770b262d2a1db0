"""DeepEP's published all-to-all figures beside moesim's network model (rows of `validation/PUBLISHED.md` and
`validation/NETWORK.md`): the normal kernels' bandwidths (training, prefill) and the low-latency kernels' times
(decode).

DeepEP's README times its normal (throughput) kernels on H800 nodes with CX7 400 Gb/s InfiniBand in DeepSeek-V3's
pre-training setting: 4,096 tokens per rank, hidden 7,168, top-8 of 256 experts within the top min(nodes, 4) nodes,
fp8 dispatch and bf16 combine, 24 SMs, and reports the bottleneck link's bandwidth in its tests' byte counts
(`tests/test_internode.py`): NVLink at EP 8 (the tokens a rank receives, its own included), RDMA beyond (a rank's
tokens once per destination node, its own node included). moesim routes the same tokens with DeepSeek-V3's router,
times them with its `deepep` all-to-all on the `hgx-h800` preset (DeepEP's measured kernels, `topology.deepep`) and
divides the same byte counts by its time. None of these rows is fitted: the kernels are fitted to aiconfigurator's
H100 tables (`moesim.validation.deepep_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cluster.topology import Topology
from moesim.cost.kernel_tables import csv_rows
from moesim.scenario import scenario_from_dict
from moesim.sim.collectives import all_to_all, local_share, low_latency_all_to_all
from moesim.sim.routing_load import route_layers
from moesim.validation.held_out import NETWORK_TABLES

DEEPEP_SOURCE = "deepseek-ai/DeepEP README, normal kernels on H800 + CX7 400 Gb/s (DeepSeek-V3 pre-training setting)"


@dataclass(frozen=True)
class DeepEPRow:
    ep: int
    dispatch_gb_per_s: float  # published, the bottleneck link
    combine_gb_per_s: float


def readme_rows(version: str, kernel: str) -> list[tuple[int, float, float]]:
    """(EP, dispatch, combine) of one version's table in `validation/network/deepep_readme.csv` (DeepEP's README
    rows, transcribed once by commit)."""
    return [
        (int(row["ranks"]), float(row["dispatch"]), float(row["combine"]))
        for row in csv_rows(NETWORK_TABLES / "deepep_readme.csv")
        if row["version"] == version and row["kernel"] == kernel
    ]


DEEPEP_NORMAL = [DeepEPRow(*row) for row in readme_rows("v1-2025-04-22", "normal")]
"""The README's normal-kernel table since its 2025-04-22 correction (the current `docs/legacy.md`)."""


def predicted_bandwidths(ep: int, network_mode: str = "full", sms: int = 24) -> tuple[float, float]:
    """moesim's (dispatch, combine) bottleneck bandwidth in GB/s at expert parallelism `ep`, in DeepEP's byte
    counts."""
    nodes = max(1, ep // 8)
    scenario = scenario_from_dict(
        {
            "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3, "router_bias": False},
            "cluster": {"preset": "hgx-h800", "num_nodes": nodes},
            "parallelism": {"ep_size": ep},
            "workload": {"mode": "training", "seq_len": 4096, "precision": {"dispatch": "fp8", "combine": "bf16"}},
            # DeepEP's test: random scores, one expert group per node (group score: its best expert), the top
            # min(nodes, 4) nodes, then the top-8 experts among them
            "routing": {
                "strategy": "group_limited",
                "group_score": "max",
                "num_expert_groups": nodes,
                "topk_groups": min(nodes, 4),
            },
            "simulation": {
                "alltoall_algorithm": "deepep",
                "network_mode": network_mode,
                "max_routed_tokens": 4096 * ep,
                "comm_sms": sms,
            },
        }
    )
    topology = Topology.from_cluster(scenario.cluster)
    (layer,), _ = route_layers(scenario, [0], 4096 * ep, topology.gpus_per_node)
    precision = scenario.workload.precision
    combine_scale = precision.token_bytes(7168, "combine") / precision.token_bytes(7168, "dispatch")
    bandwidths = []
    for traffic in (layer.traffic, layer.traffic.transposed(combine_scale)):
        result = all_to_all(topology, traffic, "deepep", network_mode, sms)
        if ep <= topology.gpus_per_node:  # NVLink: the tokens a rank receives (dispatch) or sends back (combine)
            counted = traffic.rank_bytes.sum() / ep
        else:  # RDMA: a rank's tokens once per destination node, its own node included
            counted = traffic.node_bytes.sum() / ep
        bandwidths.append(counted / result.seconds / 1e9)
    return bandwidths[0], bandwidths[1]


DEEPEP_LOW_LATENCY_SOURCE = (
    "deepseek-ai/DeepEP README, low-latency kernels on H800 + CX7 400 Gb/s: 128 tokens per rank, hidden 7,168, "
    "top-8, fp8 dispatch, bf16 combine"
)


@dataclass(frozen=True)
class DeepEPLatencyRow:
    ep: int
    dispatch_us: float  # published
    combine_us: float


DEEPEP_LOW_LATENCY = [DeepEPLatencyRow(*row) for row in readme_rows("v1-2025-02-24", "low_latency")]
"""The README's first low-latency table (pure RDMA, 2025-02-24)."""


def predicted_low_latency(ep: int, nvlink: bool = False) -> tuple[float, float]:
    """moesim's (dispatch, combine) time in microseconds of DeepEP's low-latency kernels at expert parallelism
    `ep`: 128 tokens per rank routed top-8 over 256 experts (random scores); `nvlink`: a node's own copies over
    NVLink (the kernels since 2025-06), else every copy over RDMA (the first kernels)."""
    scenario = scenario_from_dict(
        {
            "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3, "router_bias": False},
            "cluster": {"preset": "hgx-h800", "num_nodes": max(1, ep // 8)},
            "parallelism": {"ep_size": ep},
            "workload": {"mode": "inference", "seq_len": 128, "precision": {"dispatch": "fp8", "combine": "bf16"}},
            "routing": {"strategy": "top_k", "num_expert_groups": 1},
            "simulation": {"alltoall_algorithm": "deepep_low_latency", "max_routed_tokens": 128 * ep},
        }
    )
    topology = Topology.from_cluster(scenario.cluster)
    (layer,), _ = route_layers(scenario, [0], 128 * ep, topology.gpus_per_node)
    copies_in = np.array([rows.sum() for rows in layer.rank_rows])
    copies_out = np.full(ep, copies_in.sum() / ep)
    local = local_share(topology, layer.traffic) if ep > topology.gpus_per_node else np.ones(ep)
    token = scenario.workload.precision.token_bytes(7168, "dispatch")
    combine = token * scenario.workload.precision.token_bytes(7168, "combine") / token
    times = (
        low_latency_all_to_all(topology, copies_in, copies_out, token, local, "dispatch", nvlink),
        low_latency_all_to_all(topology, copies_out, copies_in, combine, local, "combine", nvlink),
    )
    return times[0].seconds * 1e6, times[1].seconds * 1e6
