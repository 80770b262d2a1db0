"""`moesim calibrate network`: nccl-tests output from a user's cluster fitted into a profile a scenario names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.cluster.collective_tables import fit
from moesim.cluster.network_profile import load_profile, parse_nccl_tests
from moesim.cluster.topology import Topology
from moesim.errors import ScenarioError
from moesim.scenario import scenario_from_dict
from moesim.validation.network_checks import nccl_rows


def _nccl_tests_output(collective: str, ranks: int, rows: list[tuple[float, float]], hosts: int = 1) -> str:
    """nccl-tests' stdout for one run (its header, device lines and the out-of-place and in-place columns)."""
    lines = [
        "# nccl-tests version 2.17.6 nccl-headers=22903 nccl-library=22903",
        f"# Collective test starting: {collective}_perf",
        f"# nThread 1 nGpus {ranks} minBytes 512 maxBytes 536870912 step: 2(factor) warmup iters: 5 iters: 20",
        "#",
        "# Using devices",
    ]
    for rank in range(ranks):
        host = f"node{rank * hosts // ranks}"
        lines.append(
            f"#  Rank {rank:2d} Group  0 Pid  {1000 + rank} on {host} device  {rank} [0x18] NVIDIA H100 80GB HBM3"
        )
    lines += [
        "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw "
        "#wrong",
        "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)",
    ]
    for size, time_us in rows:
        algbw = size / time_us / 1e3
        lines.append(
            f"{int(size):12d} {int(size) // 2:13d}    bfloat16     sum      -1 {time_us:8.2f} {algbw:7.2f} {algbw:7.2f}"
            f"      0 {time_us:8.2f} {algbw:7.2f} {algbw:7.2f}      0"
        )
    return "\n".join(lines + ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 1.0", ""])


def _h100_files(folder: Path) -> list[Path]:
    """The committed H100 nccl-tests table (aiconfigurator's), written back as nccl-tests output, one file a
    collective; plus a two-node all-reduce run."""
    files = []
    rows = [row for row in nccl_rows() if row["gpu"] == "h100_sxm"]
    for collective in ("all_reduce", "all_gather", "reduce_scatter", "alltoall"):
        parts = []
        for ranks in (2, 4, 8):
            mine = [
                (float(r["bytes"]), float(r["time_us"]))
                for r in rows
                if r["collective"] == collective and int(r["ranks"]) == ranks
            ]
            parts.append(_nccl_tests_output(collective, ranks, sorted(mine)))
        path = folder / f"{collective}_perf.txt"
        path.write_text("\n".join(parts))
        files.append(path)
    across = folder / "all_reduce_two_nodes.txt"
    across.write_text(_nccl_tests_output("all_reduce", 16, [(1 << 20, 60.0), (1 << 28, 3000.0)], hosts=2))
    return files + [across]


def test_nccl_tests_output_is_parsed_run_by_run(tmp_path: Path) -> None:
    text = "\n".join(
        [
            _nccl_tests_output("all_gather", 8, [(512, 15.6), (1 << 20, 26.8)]),
            _nccl_tests_output("sendrecv", 2, [(512, 5.0)]),  # not a collective moesim models: skipped
            _nccl_tests_output("all_reduce", 16, [(512, 30.0)], hosts=2),
        ]
    )
    runs = parse_nccl_tests(text)
    assert [(run.collective, run.ranks, run.hosts) for run in runs] == [("all_gather", 8, 1), ("all_reduce", 16, 2)]
    assert runs[0].rows == ((512.0, 15.6), (1048576.0, 26.8)) and runs[0].device == "NVIDIA H100 80GB HBM3"


def test_calibrate_network_fits_the_rows_a_scenario_then_runs(tmp_path: Path) -> None:
    files = _h100_files(tmp_path)
    result = CliRunner().invoke(app, ["calibrate", "network", *map(str, files), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    profile = tmp_path / "out" / "network-h100-sxm.json"
    assert "1 run(s) across nodes" in result.output and profile.exists()
    document = json.loads(profile.read_text())
    assert document["gpu"] == "H100-SXM" and [run["used"] for run in document["runs"]].count(False) == 1
    # the same form as the shipped tables, fitted to every row (as nccl-tests prints them, to 0.01 us): its curves
    # are what collective_tables.fit gives
    rows = [{**row, "time_us": f"{float(row['time_us']):.2f}"} for row in nccl_rows() if row["gpu"] == "h100_sxm"]
    independent = fit("H100-SXM", rows, 450e9, "")
    _, measured, _ = load_profile(str(profile))
    assert document["nccl"]["curves"] == json.loads(json.dumps(independent.to_json()))["curves"]
    scenario = scenario_from_dict(
        {"model": {"preset": "tiny-moe"}, "cluster": {"gpu": "H100-SXM", "network_profile": str(profile)}}
    )
    topology = Topology.from_cluster(scenario.cluster)
    assert topology.collectives == measured
    size = 1 << 28  # a development row of the table: all_reduce, 8 GPUs, 256 MiB
    measured_us = next(
        float(r["time_us"])
        for r in rows
        if r["collective"] == "all_reduce" and r["ranks"] == "8" and float(r["bytes"]) == size
    )
    assert topology.collectives.seconds("all_reduce", 8, size) * 1e6 == pytest.approx(measured_us, rel=1e-4)


def test_a_profile_of_another_gpu_or_no_profile_is_an_error(tmp_path: Path) -> None:
    files = _h100_files(tmp_path)
    CliRunner().invoke(app, ["calibrate", "network", *map(str, files[:1]), "--out", str(tmp_path)])
    profile = str(tmp_path / "network-h100-sxm.json")
    with pytest.raises(ScenarioError, match="cluster.network_profile: .* measured on H100-SXM.*B200"):
        scenario_from_dict({"model": {"preset": "tiny-moe"}, "cluster": {"gpu": "B200", "network_profile": profile}})
    missing = CliRunner().invoke(app, ["calibrate", "network", str(tmp_path / "absent.txt")])
    assert missing.exit_code == 2 and "cannot read" in missing.output
    across_only = tmp_path / "across.txt"
    across_only.write_text(_nccl_tests_output("all_reduce", 16, [(512, 30.0)], hosts=2))
    result = CliRunner().invoke(app, ["calibrate", "network", str(across_only), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no nccl-tests run inside one node" in result.output
    assert CliRunner().invoke(app, ["calibrate", "disk"]).exit_code == 2


def _deepep_output(dispatch: tuple[float, float], combine: tuple[float, float]) -> str:
    """DeepEP's internode test output (local rank 0's lines, as tests/legacy/test_internode.py prints them)."""
    return "\n".join(
        [
            "[config] num_tokens=4096, hidden=7168, num_topk_groups=4, num_topk=8",
            "[tuning] SMs 24, NVL chunk 4, RDMA chunk 4: 60 + 3100 us, 40.00 GB/s (RDMA), 130.00 GB/s (NVL) ",
            f"[tuning] Best dispatch (FP8): SMs 24, NVL chunk 16, RDMA chunk 16: {dispatch[0]:.0f} + {dispatch[1]:.0f} "
            "us, 46.00 GB/s (RDMA), 150.00 GB/s (NVL)",
            f"[tuning] Best combine: SMs 24, NVL chunk 3, RDMA chunk 16, {combine[0]:.2f} + {combine[1]:.2f} us, 45.00 "
            "GB/s (RDMA), 150.00 GB/s (NVL)",
        ]
    )


def test_deepeps_test_output_recalibrates_the_shipped_kernels_to_a_slower_fabric(tmp_path: Path) -> None:
    """A 4-node cluster whose DeepEP transmits take 1.5x the shipped kernels' time (a slower fabric), and whose
    low-latency kernels at EP 16 take 200 / 380 us: the profile's kernels give the measured times back, and a
    scenario naming it runs them."""
    from moesim.cluster.deepep_kernels import shipped_kernels
    from moesim.validation.deepep_calibrate import DeepEPPoint, predicted

    shipped = shipped_kernels("H100-SXM")
    assert shipped is not None
    times = {}
    for direction in ("dispatch", "combine"):
        point = DeepEPPoint("normal", direction, 32, 4096, 7168, 24, 0.0)
        transmit = predicted(shipped, point, 50e9, 450e9) - shipped.normal[direction].notify_seconds(4, 0.0)
        times[direction] = (80.0, 1.5 * transmit * 1e6)
    internode = tmp_path / "test_internode.log"
    internode.write_text(_deepep_output(times["dispatch"], times["combine"]))
    low = tmp_path / "test_low_latency.log"
    low.write_text(
        "\n".join(
            f"[rank {rank}] Dispatch bandwidth: 40.00 GB/s, avg_t=200.00 us | Combine bandwidth: 41.00 GB/s, "
            "avg_t=380.00 us"
            for rank in range(16)
        )
    )
    runner = CliRunner()
    missing = runner.invoke(app, ["calibrate", "network", str(internode), "--gpu", "H100-SXM"])
    assert missing.exit_code == 2 and "--deepep-nodes" in missing.output
    arguments = ["calibrate", "network", str(internode), str(low), "--gpu", "H100-SXM", "--deepep-nodes", "4"]
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    profile = tmp_path / "network-h100-sxm.json"
    document = json.loads(profile.read_text())
    assert document["nccl"] is None and len(document["deepep"]["points"]) == 4
    for row in document["deepep"]["points"]:
        assert row["calibrated_us"] == pytest.approx(row["measured_us"], rel=0.01), row
    normal = [row for row in document["deepep"]["points"] if row["kernel"] == "normal"]
    assert all(row["shipped_us"] < 0.8 * row["measured_us"] for row in normal)  # the fabric is slower
    scenario = scenario_from_dict(
        {"model": {"preset": "tiny-moe"}, "cluster": {"gpu": "H100-SXM", "network_profile": str(profile)}}
    )
    kernels = Topology.from_cluster(scenario.cluster).deepep
    assert kernels is not None and kernels.normal["dispatch"].rdma_efficiency[4] < 0.8 * 0.9715
    assert Topology.from_cluster(scenario.cluster).collectives is not None  # the shipped NCCL tables stay
