"""NCCL's collectives inside a node from measured tables (issue 28): the shipped fits come from development rows
only, meet the issue's bar on the held-out rows, and are what the simulator's collectives run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cluster.collective_tables import GPU_TABLES, MEASURED, bus_factor, shipped
from moesim.cluster.topology import Topology
from moesim.errors import ScenarioError
from moesim.scenario import scenario_from_dict
from moesim.scenario.sections import ClusterSpec
from moesim.sim.collectives import all_reduce_time
from moesim.sim.network import transfer_time
from moesim.validation import network, network_checks
from moesim.validation.held_out import is_held_out_network_row


def _h100_node(**cluster: object) -> Topology:
    return Topology.from_cluster(ClusterSpec(**{"num_nodes": 2, "gpu": "H100-SXM", **cluster}))


def test_the_shipped_fits_are_what_the_development_rows_give() -> None:
    for gpu, measured in network_checks.fit_all().items():
        shipped_document = json.loads((MEASURED / f"nccl_{gpu}.json").read_text())
        assert shipped_document == json.loads(json.dumps(measured.to_json())), gpu


def test_no_held_out_row_reaches_a_fit() -> None:
    rows = network_checks.nccl_rows()
    spoiled = [
        {**row, "time_us": str(float(row["time_us"]) * 10)} if is_held_out_network_row(row) else row for row in rows
    ]
    assert any(is_held_out_network_row(row) for row in rows)
    clean, dirty = network_checks.fit_all(rows), network_checks.fit_all(spoiled)
    for gpu, fit in clean.items():
        assert fit.curves == dirty[gpu].curves, gpu  # only the held-out error they report moves
        assert fit.held_out_error[0] == dirty[gpu].held_out_error[0] and fit.held_out_error[1] < 0.2
        assert dirty[gpu].held_out_error[1] > 0.5


def test_held_out_rows_meet_the_issues_bar_and_the_datasheet_model_does_not() -> None:
    held = [check for check in network_checks.nccl_checks() if check.held_out]
    assert len(held) == 453
    measured, datasheet = network_checks.errors(held), network_checks.errors(held, "datasheet_s")
    assert np.median(measured) <= 0.10 and np.percentile(measured, 90) <= 0.25  # issue 28's bar
    assert np.median(datasheet) > 0.5  # the link rate and 2 us miss NCCL by more than half


def test_an_h100_node_all_to_all_runs_at_the_rate_nccl_measured_not_the_datasheet() -> None:
    """nccl-tests' 8-GPU all-to-all of 512 MiB on H100 took 1,490 us (a development row): 315 GB/s through each GPU's
    link, 70% of NVLink's 450 GB/s. The simulator's uniform all-to-all of the same size gives that time."""
    topology = _h100_node()
    size = 536870912.0
    matrix = np.full((8, 8), size / 8)
    result = transfer_time(topology, np.arange(8), matrix, "full", nccl=True)
    assert result.seconds == pytest.approx(1490.4e-6, rel=0.01)
    assert 7 / 8 * size / (result.seconds - result.latency_seconds) == pytest.approx(315e9, rel=0.02)
    datasheet = transfer_time(topology, np.arange(8), matrix, "full", nccl=False)  # DeepEP's kernels: the link rate
    assert datasheet.seconds == pytest.approx(2e-6 + 7 / 8 * size / 450e9, rel=1e-9)


def test_a_tensor_parallel_all_reduce_inside_a_node_is_nccls_measured_one() -> None:
    topology = _h100_node()
    measured = shipped("H100-SXM")
    assert measured is not None
    for ranks, size in ((2, 1 << 20), (4, 3 << 22), (8, 1 << 28)):
        assert all_reduce_time(topology, np.arange(ranks), size) == measured.seconds("all_reduce", ranks, size)
    # small messages pay NCCL's floor (nccl-tests: 15.6 us at 512 B on 8 GPUs; within the held-out p90 bar of 25%),
    # not the datasheet ring's 14 steps x 2 us
    assert all_reduce_time(topology, np.arange(8), 512) == pytest.approx(15.6e-6, rel=0.25)


def test_a_slower_link_scales_the_measured_rate() -> None:
    fast, slow = _h100_node(), _h100_node(scale_up_gb_per_s=225)
    size = 1 << 28
    latency = shipped("H100-SXM").curves["all_reduce"].latency(8)  # type: ignore[union-attr]
    assert all_reduce_time(slow, np.arange(8), size) - latency == pytest.approx(
        2 * (all_reduce_time(fast, np.arange(8), size) - latency), rel=1e-9
    )


def test_a_measured_latency_cannot_also_be_set_by_hand() -> None:
    document = {"model": {"preset": "tiny-moe"}, "cluster": {"gpu": "H100-SXM", "scale_up_latency_us": 3}}
    with pytest.raises(ScenarioError, match="cluster.scale_up_latency_us.*scale_up_collectives: datasheet"):
        scenario_from_dict(document)
    datasheet = ClusterSpec(gpu="H100-SXM", scale_up_latency_us=3, scale_up_collectives="datasheet")
    assert Topology.from_cluster(datasheet).collectives is None
    mi300x = Topology.from_cluster(ClusterSpec(gpu="MI300X", scale_up_latency_us=3))
    assert mi300x.collectives is None and mi300x.scale_up_latency_s == 3e-6  # no table measures an MI300X


def test_a_domain_larger_than_the_tables_measure_runs_at_the_datasheet_rate() -> None:
    """GB200's tables measure 2 and 4 GPUs: a 4-GPU tray reads them, a 72-GPU NVL72 rack does not extend them."""
    tray = Topology.from_cluster(ClusterSpec(gpu="GB200", gpus_per_node=4))
    rack = Topology.from_cluster(ClusterSpec(gpu="GB200", gpus_per_node=72))
    assert tray.collectives is not None and tray.collectives.covers(4)
    assert rack.collectives is None and rack.scale_up_latency_s == 2e-6
    assert Topology.from_cluster(
        ClusterSpec(gpu="GB200", gpus_per_node=72, scale_up_latency_us=3)
    ).scale_up_latency_s == (3e-6)  # no measured latency to contradict


def test_an_h800_reads_the_h100_tables_at_its_own_nvlink_rate() -> None:
    h800, h100 = shipped("H800"), shipped("H100-SXM")
    assert h800 == h100  # the same measured fractions and latencies
    topology = Topology.from_cluster(ClusterSpec(gpu="H800"))
    size = 256 * 2**20
    ratio = h800.seconds("all_gather", 8, size, topology.scale_up_bytes_per_s) / h100.seconds("all_gather", 8, size)
    assert ratio == pytest.approx(450 / 200, rel=0.01)  # a large all-gather is bandwidth: 450 / 200 GB/s


def test_every_gpu_preset_with_a_table_ships_its_fit() -> None:
    for name in GPU_TABLES:
        measured = shipped(name)
        assert measured is not None and set(measured.curves) == {
            "all_reduce",
            "all_gather",
            "reduce_scatter",
            "alltoall",
        }
        assert measured.measured_ranks == ((2, 4) if name.startswith("GB") else (2, 4, 8))
    assert bus_factor("all_reduce", 8) == 2 * 7 / 8 and bus_factor("alltoall", 4) == 3 / 4


def test_network_md_is_what_the_code_gives() -> None:
    assert network.REPORT.read_text() == network.report()
