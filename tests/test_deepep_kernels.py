"""DeepEP's kernels from measured tables (issue 28): the shipped fit comes from development rows only, meets the
issue's bar on the held-out rows and on DeepEP's own README tables (never fitted), and is what the simulator's
DeepEP all-to-alls run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cluster.deepep_kernels import MEASURED, shipped_kernels
from moesim.cluster.topology import Topology
from moesim.scenario import scenario_from_dict
from moesim.scenario.sections import ClusterSpec
from moesim.sim.collectives import Traffic, all_to_all, deepep_volumes
from moesim.sim.step import simulate
from moesim.validation import deepep_fit
from moesim.validation.deepep import predicted_bandwidths, predicted_low_latency, readme_rows
from moesim.validation.held_out import is_held_out_network_row


def test_the_shipped_kernels_are_what_the_development_rows_give() -> None:
    shipped_document = json.loads((MEASURED / "deepep_h100_sxm.json").read_text())
    assert shipped_document == json.loads(json.dumps(deepep_fit.fit_with_errors().to_json()))


def test_no_held_out_row_reaches_the_fit() -> None:
    def spoiled(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [
            {key: str(float(value) * 10) if key.endswith("_us") else value for key, value in row.items()}
            if is_held_out_network_row(row)
            else row
            for row in rows
        ]

    normal, low = deepep_fit.normal_rows(), deepep_fit.low_latency_rows()
    assert any(map(is_held_out_network_row, normal)) and any(map(is_held_out_network_row, low))
    clean, dirty = deepep_fit.fit(normal, low), deepep_fit.fit(spoiled(normal), spoiled(low))
    assert clean.normal == dirty.normal and clean.low_latency == dirty.low_latency


def test_held_out_rows_meet_the_issues_bar_and_the_link_model_does_not() -> None:
    held = [check for check in deepep_fit.checks(shipped_kernels("H100-SXM", fabric=True)) if check.held_out]
    for kernel, rows in (("normal", 250), ("low_latency", 56)):
        mine = [check for check in held if check.kernel == kernel]
        assert len(mine) == rows
        errors = [check.error for check in mine]
        assert np.median(errors) <= 0.10 and np.percentile(errors, 90) <= 0.25, kernel  # issue 28's bar
        assert np.median([abs(check.link_us / check.measured_us - 1) for check in mine]) > 0.25, kernel


def test_a_development_row_is_reproduced_and_fewer_sms_are_slower() -> None:
    """2 H100 nodes, 131,072 tokens a rank, dispatch (development rows): the transmit kernel took 115,268 us on 4
    SMs, 21,931 us on 24; the notify kernel before it is the fitted line's."""
    kernels = shipped_kernels("H100-SXM", fabric=True)
    assert kernels is not None
    rdma, nvl, link, nodes = deepep_fit.normal_volumes(2, 131072, "dispatch")
    notify = kernels.normal["dispatch"].notify_seconds(2, nvl)
    assert 30e-6 < notify < 70e-6  # aiconfigurator's dispatch notify on 2 nodes: 29-66 us at the median
    for sms, measured_us in ((4, 115268.0), (24, 21931.0)):
        row = {"table": "deepep_normal/h100_sxm", "ranks": "16", "tokens": "131072"}
        assert not is_held_out_network_row(row)
        seconds = kernels.normal_seconds("dispatch", nodes, sms, rdma, nvl, link, 50e9, 450e9)
        assert (seconds - notify) * 1e6 == pytest.approx(measured_us, rel=1e-3)
    # between the measured SM counts the time falls as SMs are added
    times = [kernels.normal_seconds("dispatch", 2, sms, rdma, nvl, link, 50e9, 450e9) for sms in (4, 6, 8, 16, 24)]
    assert times == sorted(times, reverse=True)


def test_deepeps_readme_is_reproduced_without_fitting_it() -> None:
    """DeepEP's README (H800, 2025-04-22 kernels): EP 16 normal kernels within 15% (the issue's bar), the others
    within 10%; the first low-latency table's growth from EP 8 to EP 256 within 5 points."""
    for ep, dispatch, combine in readme_rows("v1-2025-04-22", "normal"):
        ours = predicted_bandwidths(ep)
        bar = 0.15 if ep == 16 else 0.10
        assert ours[0] == pytest.approx(dispatch, rel=bar) and ours[1] == pytest.approx(combine, rel=bar), ep
    first = {ep: (dispatch, combine) for ep, dispatch, combine in readme_rows("v1-2025-02-24", "low_latency")}
    low, high = predicted_low_latency(8), predicted_low_latency(256)
    for index in (0, 1):
        published = first[256][index] / first[8][index] - 1
        assert abs(high[index] / low[index] - 1 - published) <= 0.05


def test_volumes_by_hand() -> None:
    """2 nodes x 2 GPUs: rank 0 sends 10 bytes to each rank (itself included) and 3 bytes more to each of node 1's
    ranks' node once; node 1's ranks send nothing."""
    topology = Topology(num_nodes=2, gpus_per_node=2, scale_up_bytes_per_s=450e9, nics_per_node=2, nic_bytes_per_s=50e9)
    rank_bytes = np.zeros((4, 4))
    rank_bytes[0] = 10.0
    node_bytes = np.zeros((4, 2))
    node_bytes[0] = [20.0, 13.0]  # node 0 (its own: not RDMA), node 1 once for both its ranks
    rdma, nvl, link, nodes = deepep_volumes(topology, Traffic(np.arange(4), rank_bytes, node_bytes))
    assert (rdma, nvl, link, nodes) == (13.0, 40.0, 30.0, 2)


def test_the_simulator_runs_the_measured_kernels_where_they_are_measured() -> None:
    generic = shipped_kernels("H100-SXM")
    assert generic is not None and 8 not in generic.normal["dispatch"].floor_s  # the measuring fabric left out
    measured = shipped_kernels("H100-SXM", fabric=True).normal["dispatch"].rdma_efficiency  # type: ignore[union-attr]
    assert set(generic.normal["dispatch"].rdma_efficiency.values()) == {measured[4]} and measured[8] < 0.5
    assert Topology.from_cluster(ClusterSpec(gpu="H800")).deepep == generic
    assert Topology.from_cluster(ClusterSpec(gpu="B200")).deepep == generic  # derived: see the Blackwell test
    assert Topology.from_cluster(ClusterSpec(gpu="GB200", gpus_per_node=4)).deepep is None  # a tray's count unstated
    assert Topology.from_cluster(ClusterSpec(gpu="H100-SXM", deepep_kernels="link_rates")).deepep is None

    def scenario(sms: int, kernels: str = "measured") -> dict:
        return {
            "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3, "router_bias": False},
            "cluster": {"preset": "dgx-h100", "num_nodes": 2, "deepep_kernels": kernels},
            "parallelism": {"ep_size": 16},
            "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 16},
            "simulation": {"alltoall_algorithm": "deepep", "network_mode": "fast", "comm_sms": sms},
        }

    few, many = (simulate(scenario_from_dict(scenario(sms)), check_memory=False) for sms in (8, 24))
    assert few.phase_seconds["dispatch"] > 1.5 * many.phase_seconds["dispatch"]  # the NVLink stage is the SMs'
    links = simulate(scenario_from_dict(scenario(24, "link_rates")), check_memory=False)
    assert links.phase_seconds["dispatch"] < many.phase_seconds["dispatch"]  # the link rates were optimistic
    # each figure says what it rests on: the measured kernels, or the network model's link rates
    assert many.sources["dispatch"].startswith("DeepEP's kernels measured on h100_sxm")
    assert links.sources["combine"].startswith("network model:") and "wait" not in many.sources["dispatch"]


def test_a_single_node_call_is_the_intranode_kernel() -> None:
    topology = Topology.from_cluster(ClusterSpec(gpu="H100-SXM"))
    rank_bytes = np.full((8, 8), 1e6)
    traffic = Traffic(np.arange(8), rank_bytes, rank_bytes.sum(axis=1, keepdims=True))
    kernels = topology.deepep
    assert kernels is not None
    result = all_to_all(topology, traffic, "deepep", "fast", 20)
    assert result.seconds >= kernels.normal["dispatch"].floor_s[1]
    assert result.bytes_across_nodes == 0


def test_the_h100_fit_on_one_h200_node_a_check_never_fitted() -> None:
    """aiconfigurator's single-node H200 tables (18 shapes, 4-24 SMs), never fitted: from 512 tokens a rank moesim's
    H100-fitted kernels are within 10% at the median (DeepSeek-V3's shape: within 10% / 25%); the smallest calls sit
    on the H100 table's higher floor, so moesim is slower there, not faster (NETWORK.md reports both)."""
    from moesim.validation.deepep_h200 import checks as h200_checks

    rows = h200_checks(shipped_kernels("H200"))  # type: ignore[arg-type]
    normal = [row for row in rows if row.kernel == "normal"]
    assert len(normal) == 2 * 2484 and len(rows) - len(normal) == 2 * 176
    large = [row.error for row in normal if row.tokens >= 512]
    assert np.median(large) <= 0.10
    deepseek = [row.error for row in normal if row.tokens >= 512 and row.shape == "7168x8x256"]
    assert np.median(deepseek) <= 0.10 and np.percentile(deepseek, 90) <= 0.25
    smallest = [row.predicted_us / row.measured_us for row in normal if row.tokens <= 16]
    assert np.median(smallest) > 1.0


def test_blackwell_runs_the_h100_kernels_because_the_link_rates_were_fourteen_times_too_fast() -> None:
    """One B200 node (aiconfigurator's tables): the link rates moesim ran there gave 7% of the measured normal-kernel
    times; the H100-fitted kernels, chosen on the development rows, are within 12% at the median on the held-out
    rows (NETWORK.md quotes 10.5% / 30.3%)."""
    from moesim.validation.deepep_h200 import checks as node_checks

    links = [row for row in node_checks(None, "deepep_blackwell", "b200_sxm") if row.kernel == "normal"]
    fitted = [
        row for row in node_checks(shipped_kernels("B200"), "deepep_blackwell", "b200_sxm") if row.kernel == "normal"
    ]
    assert np.median([row.predicted_us / row.measured_us for row in links]) < 0.1
    held = [
        row.error
        for row in fitted
        if is_held_out_network_row(
            {"table": f"deepep_normal/b200_sxm/{row.shape}", "ranks": "8", "tokens": str(row.tokens)}
        )
    ]
    assert len(held) == 1428 and np.median(held) <= 0.12
