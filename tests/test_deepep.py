"""DeepEP's two kernel modes as moesim models them: the normal kernels (node-deduplicated RDMA, then NVLink) and
the low-latency kernels (every token-expert copy over RDMA)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.scenario import scenario_from_dict
from moesim.sim.collectives import low_latency_all_to_all
from moesim.sim.step import simulate


def _decode(algorithm: str) -> dict:
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
        "cluster": {"preset": "hgx-h800", "num_nodes": 2},
        "parallelism": {"ep_size": 16},
        "workload": {
            "mode": "inference",
            "micro_batch_size": 8,
            "seq_len": 1024,
            "decode_tokens": 16,
            "precision": {"dispatch": "fp8", "combine": "bf16"},
        },
        "simulation": {"network_mode": "fast", "alltoall_algorithm": algorithm},
    }


def test_low_latency_time_is_latency_plus_the_busiest_nic() -> None:
    topology = Topology.from_cluster(scenario_from_dict(_decode("deepep")).cluster)
    # 128 tokens x 8 copies per rank, one rank receiving 10% more: 7,392 fp8 bytes a copy at 50 GB/s
    copies_in = np.array([1024.0] * 15 + [1126.4])
    result = low_latency_all_to_all(topology, copies_in, np.full(16, 1024.0), 7392)
    assert result.seconds == pytest.approx(topology.network_latency_s + 1126.4 * 7392 / 50e9)
    assert result.bytes_across_nodes == 16 * 1024 * 7392  # every copy over RDMA, none deduplicated


def test_a_decode_step_can_use_either_mode() -> None:
    normal = simulate(scenario_from_dict(_decode("deepep")), check_memory=False)
    low = simulate(scenario_from_dict(_decode("deepep_low_latency")), check_memory=False)
    assert normal.decode_step_s > 0 and low.decode_step_s > 0
    assert low.phase_seconds["decode/dispatch"] != normal.phase_seconds["decode/dispatch"]
