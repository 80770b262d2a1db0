"""DeepEP's two kernel modes as moesim models them: the normal kernels (node-deduplicated RDMA, then NVLink) and
the low-latency kernels (every token-expert copy its own message)."""

from __future__ import annotations

from typing import Any

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


def test_low_latency_time_is_the_floor_plus_the_busiest_rank() -> None:
    document = _decode("deepep")
    links = {**document, "cluster": {**document["cluster"], "deepep_kernels": "link_rates"}}
    topology = Topology.from_cluster(scenario_from_dict(links).cluster)
    # 128 tokens x 8 copies per rank, one rank receiving 10% more: 7,392 fp8 bytes a copy at 50 GB/s
    copies_in = np.array([1024.0] * 15 + [1126.4])
    result = low_latency_all_to_all(topology, copies_in, np.full(16, 1024.0), 7392)
    assert result.seconds == pytest.approx(topology.network_latency_s + 1126.4 * 7392 / 50e9)
    assert result.bytes_across_nodes == 16 * 1024 * 7392  # every copy over RDMA, none deduplicated
    # the measured kernels: their floor at EP 16 plus the busiest rank's RDMA copies at the measured rate; half of
    # each rank's copies from its own node go over NVLink (at 1,126.4 x 3,696 bytes, well under the RDMA time)
    measured = Topology.from_cluster(scenario_from_dict(document).cluster)
    kernels = measured.deepep
    assert kernels is not None
    local = np.full(16, 0.5)
    result = low_latency_all_to_all(measured, copies_in, np.full(16, 1024.0), 7392, local)
    fit = kernels.low_latency["dispatch"]
    assert result.seconds == pytest.approx(fit.floor(16) + 563.2 * 7392 / (fit.rdma_efficiency * 50e9))
    assert result.bytes_across_nodes == pytest.approx(16 * 1024 * 7392 / 2 + 0.5 * 102.4 * 7392)


def test_a_decode_step_can_use_either_mode() -> None:
    normal = simulate(scenario_from_dict(_decode("deepep")), check_memory=False)
    low = simulate(scenario_from_dict(_decode("deepep_low_latency")), check_memory=False)
    assert normal.decode_step_s > 0 and low.decode_step_s > 0
    assert low.phase_seconds["decode/dispatch"] != normal.phase_seconds["decode/dispatch"]


def test_low_latency_kernels_hold_the_sms_only_for_their_send_and_receive_phases() -> None:
    """DeepEP's low-latency kernels hold no SMs while their messages fly (no stretch of the compute, unlike the
    normal kernels' `comm_sms`) but run their send and receive phases on the SMs: they replace the permutation
    and un-permutation, each the fixed synchronisation cost plus its bytes at HBM bandwidth."""
    from moesim.sim.device import comm_stretch, cost_model_for
    from moesim.sim.moe_block import LOW_LATENCY_KERNEL_FIXED_S, low_latency_kernel_seconds
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import StagePlan

    def scenario(algorithm: str) -> Any:
        document = _decode(algorithm)
        return scenario_from_dict({**document, "simulation": {**document["simulation"], "comm_sms": 20}})

    normal, low = scenario("deepep"), scenario("deepep_low_latency")
    assert comm_stretch(normal) == pytest.approx(132 / 112)  # the normal kernels hold 20 of the H800's 132 SMs
    assert comm_stretch(low) == 1.0
    tokens, served, top_k, hidden = 128, 1024.0, 8, 7168
    cost = cost_model_for(low)
    builder = PhaseBuilder(low, StagePlan(low), cost, Topology.from_cluster(low.cluster), tokens, 1024)
    dispatch, combine = low_latency_kernel_seconds(builder, served, top_k)
    # dispatch: bf16 tokens in, fp8 tokens (7,392 bytes with scales) out; each arrived copy read and laid out
    dispatch_bytes = tokens * (2 * hidden + 7392) + 2 * served * 7392
    assert dispatch == pytest.approx(LOW_LATENCY_KERNEL_FIXED_S + cost.memory_seconds(dispatch_bytes))
    # combine: each expert output read and packed as bf16, each token's 8 copies reduced into one
    combine_bytes = served * (2 * hidden + 2 * hidden) + tokens * (top_k * 2 * hidden + 2 * hidden)
    assert combine == pytest.approx(LOW_LATENCY_KERNEL_FIXED_S + cost.memory_seconds(combine_bytes))
    assert 55e-6 < dispatch < 65e-6  # SGLang's ~0.06 ms of SM time at 128 tokens a rank: bytes add a few us
    # in a decode step they stand where the permutation and un-permutation stand: once per MoE layer and step
    steps = low.workload.decode_tokens
    phases = simulate(low, check_memory=False).phase_seconds
    assert phases["decode/permute"] > steps * LOW_LATENCY_KERNEL_FIXED_S
    assert phases["decode/unpermute"] > steps * LOW_LATENCY_KERNEL_FIXED_S
    plain = simulate(scenario_from_dict(_decode("deepep")), check_memory=False).phase_seconds
    # the normal kernels leave the executor's own permutation in place: its 15 kernels (60 us in a stream) and
    # their bytes, a different cost from the low-latency kernels' send phase
    from moesim.cost.shipping import LAUNCHES

    assert plain["decode/permute"] > steps * LAUNCHES["permute"] * 4e-6
    assert plain["decode/permute"] != pytest.approx(phases["decode/permute"], rel=1e-3)
    assert plain["decode/router"] == pytest.approx(phases["decode/router"])  # the router is the same either way
