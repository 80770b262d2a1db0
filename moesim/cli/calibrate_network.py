"""`moesim calibrate network FILES`: nccl-tests output from your cluster, fitted into a network profile.

The side-effect edge of `moesim.cluster.network_profile` (which parses and fits): reads the files, names the GPU
preset, writes the profile JSON and prints what it fitted.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from rich.table import Table

from moesim.cli.common import console
from moesim.cluster.deepep_kernels import shipped_kernels
from moesim.cluster.hardware import gpu_preset
from moesim.cluster.network_profile import NcclRun, build_profile, parse_nccl_tests
from moesim.errors import MoesimError
from moesim.validation.deepep_calibrate import DeepEPPoint, calibrate, parse_deepep, predicted

DEVICE_PRESETS = (
    ("GB300", "GB300"),
    ("GB200", "GB200"),
    ("B300", "B300"),
    ("B200", "B200"),
    ("H800", "H800"),
    ("H200", "H200"),
    ("H100", "H100-SXM"),
    ("A100", "A100-80GB"),
)
"""The GPU preset a device name nccl-tests prints stands for (the first match; GB before B)."""


def preset_for_device(device: str) -> Optional[str]:
    return next((preset for key, preset in DEVICE_PRESETS if key in device.upper()), None)


def read_files(files: list[Path], deepep_nodes: Optional[int]) -> tuple[list[NcclRun], list[DeepEPPoint]]:
    runs: list[NcclRun] = []
    points: list[DeepEPPoint] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError as error:
            raise MoesimError(f"calibrate network: cannot read {path} ({error.strerror})") from None
        found = parse_nccl_tests(text)
        try:
            deepep = parse_deepep(text, deepep_nodes)
        except ValueError:
            raise MoesimError(f"--deepep-nodes: {path} is DeepEP's internode test output; give its nodes") from None
        if not found and not deepep:
            raise MoesimError(
                f"calibrate network: {path} holds no nccl-tests run of all_reduce, all_gather, reduce_scatter or "
                "alltoall (their *_perf output, with its '# Collective test starting:' line) and no DeepEP test output"
            )
        runs += found
        points += deepep
    return runs, points


def _deepep(name: str, points: list[DeepEPPoint]) -> Optional[dict]:
    """DeepEP's shipped kernels moved to the points, with the points beside both (printed)."""
    if not points:
        return None
    base = shipped_kernels(name)
    if base is None:
        raise MoesimError(f"calibrate network: no measured DeepEP kernels for {name} to recalibrate (H100, H800, H200)")
    spec = gpu_preset(name)
    nic, nvlink = spec.nic_gbps * 1e9 / 8, spec.scale_up_gb_per_s * 1e9
    kernels = calibrate(base, points, nic, nvlink)
    table = Table(title=f"DeepEP's tests on your {name} cluster (us; normal kernels: notify + transmit)")
    for column in ("kernel", "direction", "EP", "tokens", "SMs", "measured", "shipped", "calibrated"):
        table.add_column(column, justify="left" if column in ("kernel", "direction") else "right")
    rows = []
    for point in points:
        measured = point.transmit_s + point.notify_s
        shipped, mine = predicted(base, point, nic, nvlink), predicted(kernels, point, nic, nvlink)
        rows.append(
            {**asdict(point), "measured_us": measured * 1e6, "shipped_us": shipped * 1e6, "calibrated_us": mine * 1e6}
        )
        cells = (str(point.ranks), str(point.tokens), str(point.sms or "-"))
        table.add_row(point.kernel, point.direction, *cells, *(f"{v * 1e6:.0f}" for v in (measured, shipped, mine)))
    console.print(table)
    return {"kernels": kernels.to_json(), "points": rows}


def calibrate_network(files: list[Path], gpu: Optional[str], out: Path, deepep_nodes: Optional[int] = None) -> Path:
    """Fit the files and write the profile; returns its path."""
    if not files:
        raise MoesimError("calibrate network: name the nccl-tests or DeepEP test output files")
    runs, points = read_files(files, deepep_nodes)
    name = gpu or (preset_for_device(runs[0].device) if runs else None)
    if name is None:
        device = f"'{runs[0].device}'" if runs else "DeepEP's output (it names no GPU)"
        raise MoesimError(f"--gpu: cannot tell the GPU preset from {device}; pass --gpu (see presets list)")
    spec = gpu_preset(name)
    deepep = _deepep(spec.name, points)
    document = build_profile(runs, spec.name, spec.scale_up_gb_per_s, [path.name for path in files], deepep)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"network-{spec.name.lower()}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    if document["nccl"] is None:
        console.print(f"profile written to {path}; use it with --set cluster.network_profile={path}")
        return path
    table = Table(title=f"NCCL inside one {document['device']} node (fitted as {spec.name})")
    for column in ("collective", "GPUs", "rows", "floor (us)", "largest: bus GB/s"):
        table.add_column(column, justify="left" if column == "collective" else "right")
    for run in runs:
        if run.hosts != 1:
            continue
        size, time_us = max(run.rows)
        floor = min(time for _, time in run.rows)
        share = (run.ranks - 1) / run.ranks * (2 if run.collective == "all_reduce" else 1)
        table.add_row(
            run.collective,
            str(run.ranks),
            str(len(run.rows)),
            f"{floor:.1f}",
            f"{share * size / (time_us * 1e-6) / 1e9:.0f}",
        )
    console.print(table)
    skipped = [run for run in runs if run.hosts != 1]
    if skipped:
        console.print(
            f"{len(skipped)} run(s) across nodes listed in the profile, not used: moesim's NCCL across nodes is the "
            "NIC line rate until it has a measured model"
        )
    console.print(f"profile written to {path}; use it with --set cluster.network_profile={path}")
    return path
