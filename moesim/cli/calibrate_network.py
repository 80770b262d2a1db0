"""`moesim calibrate network FILES`: nccl-tests output from your cluster, fitted into a network profile.

The side-effect edge of `moesim.cluster.network_profile` (which parses and fits): reads the files, names the GPU
preset, writes the profile JSON and prints what it fitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.table import Table

from moesim.cli.common import console
from moesim.cluster.hardware import gpu_preset
from moesim.cluster.network_profile import NcclRun, build_profile, parse_nccl_tests
from moesim.errors import MoesimError

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


def read_runs(files: list[Path]) -> list[NcclRun]:
    runs: list[NcclRun] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError as error:
            raise MoesimError(f"calibrate network: cannot read {path} ({error.strerror})") from None
        found = parse_nccl_tests(text)
        if not found:
            raise MoesimError(
                f"calibrate network: {path} holds no nccl-tests run of all_reduce, all_gather, reduce_scatter or "
                "alltoall (their *_perf output, with its '# Collective test starting:' line)"
            )
        runs += found
    return runs


def calibrate_network(files: list[Path], gpu: Optional[str], out: Path) -> Path:
    """Fit the files and write the profile; returns its path."""
    if not files:
        raise MoesimError("calibrate network: name the nccl-tests output files, e.g. all_reduce_perf.txt")
    runs = read_runs(files)
    name = gpu or preset_for_device(runs[0].device)
    if name is None:
        raise MoesimError(
            f"--gpu: cannot tell the GPU preset from '{runs[0].device}'; pass --gpu (moesim presets list)"
        )
    spec = gpu_preset(name)
    document = build_profile(runs, spec.name, spec.scale_up_gb_per_s, [path.name for path in files])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"network-{spec.name.lower()}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
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
