"""Your own fabric: nccl-tests output from a user's cluster, fitted into a network profile that scenarios name.

`moesim calibrate network FILE...` reads the standard output of nccl-tests' `all_reduce_perf`, `all_gather_perf`,
`reduce_scatter_perf` and `alltoall_perf` (one or several runs a file, each starting `# Collective test starting:`),
keeps the runs inside one node, and fits them with the same form as the shipped tables
(`moesim.cluster.collective_tables`: a latency line through each GPU count's floor, the bus rate by message size);
DeepEP's test output, where given, recalibrates the shipped DeepEP kernels (`moesim.validation.deepep_calibrate`).
`cluster.network_profile: PATH` then replaces the shipped curves and kernels for that cluster. Runs across nodes are
listed in the profile but not used: moesim's NCCL across nodes is the NIC's line rate until a measured model of it
exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from moesim.cluster.collective_tables import COLLECTIVES, MeasuredCollectives, fit
from moesim.cluster.deepep_kernels import DeepEPKernels
from moesim.errors import ScenarioError

PROFILE_KIND = "moesim-network-profile"
_PROGRAMS = {f"{name}_perf": name for name in COLLECTIVES}
_START = re.compile(r"^# Collective test starting: (\S+)", re.M)
_RANK = re.compile(
    r"^#\s+Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)\s+device\s+\d+\s+\[[^\]]*\]\s+(.*)$", re.M
)


@dataclass(frozen=True)
class NcclRun:
    """One nccl-tests run: its collective, ranks, hosts, the GPU it names and (bytes, out-of-place us) rows."""

    collective: str
    ranks: int
    hosts: int
    device: str
    rows: tuple[tuple[float, float], ...]


def parse_nccl_tests(text: str) -> list[NcclRun]:
    """Every run of the four collectives moesim models in one nccl-tests output (other programs are skipped)."""
    starts = [match.start() for match in _START.finditer(text)] + [len(text)]
    runs = []
    for begin, end in zip(starts, starts[1:]):
        part = text[begin:end]
        program = _START.search(part).group(1)  # type: ignore[union-attr]
        collective = _PROGRAMS.get(program)
        if collective is None:
            continue
        ranks = {int(rank): (host, device.strip()) for rank, host, device in _RANK.findall(part)}
        rows = []
        for line in part.splitlines():
            fields = line.split()
            if line.startswith("#") or len(fields) < 13 or not fields[0].isdigit():
                continue
            size, time_us = float(fields[0]), float(fields[5])  # size in bytes; the out-of-place time
            if size > 0 and time_us > 0:
                rows.append((size, time_us))
        if ranks and rows:
            hosts = len({host for host, _ in ranks.values()})
            device = sorted({device for _, device in ranks.values()})[0]
            runs.append(NcclRun(collective, len(ranks), hosts, device, tuple(rows)))
    return runs


def build_profile(
    runs: list[NcclRun], gpu_name: str, datasheet_gb_per_s: float, sources: list[str], deepep: Optional[dict] = None
) -> dict:
    """The profile document: NCCL's curves inside a node from the single-host runs (the others listed), and
    DeepEP's kernels where the caller calibrated them (`deepep`: their JSON and the points)."""
    inside = [run for run in runs if run.hosts == 1 and run.ranks > 1]
    if not inside and deepep is None:
        raise ScenarioError(
            "calibrate network: no nccl-tests run inside one node (2 or more GPUs on one host) and no DeepEP test "
            "output in the files; run all_reduce_perf, all_gather_perf, reduce_scatter_perf or alltoall_perf with "
            "-g <gpus> on one node, or DeepEP's tests"
        )
    rows = [
        {"collective": run.collective, "ranks": str(run.ranks), "bytes": str(size), "time_us": str(time_us)}
        for run in inside
        for size, time_us in run.rows
    ]
    measured = None
    if inside:
        source = f"nccl-tests on the user's {inside[0].device} node ({', '.join(sources)}; {len(rows)} rows)"
        measured = fit(gpu_name, rows, datasheet_gb_per_s * 1e9, source).to_json()
    return {
        "kind": PROFILE_KIND,
        "gpu": gpu_name,
        "device": inside[0].device if inside else None,
        "nccl": measured,
        "deepep": deepep,
        "runs": [
            {
                "collective": run.collective,
                "ranks": run.ranks,
                "hosts": run.hosts,
                "rows": len(run.rows),
                "used": run in inside,
            }
            for run in runs
        ],
    }


@lru_cache(maxsize=None)
def load_profile(path: str) -> tuple[str, Optional[MeasuredCollectives], Optional[DeepEPKernels]]:
    """(GPU preset name, NCCL's curves, DeepEP's kernels) of a network profile (None: not measured there); an
    error names the field and the fix."""
    try:
        document: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ScenarioError(
            f"cluster.network_profile: cannot read {path} ({error}); write one with moesim calibrate network"
        ) from None
    if not isinstance(document, dict) or document.get("kind") != PROFILE_KIND:
        raise ScenarioError(f"cluster.network_profile: {path} is not a network profile; use moesim calibrate network")
    nccl, deepep = document.get("nccl"), (document.get("deepep") or {}).get("kernels")
    return (
        document["gpu"],
        MeasuredCollectives.from_json(nccl) if nccl else None,
        DeepEPKernels.from_json(deepep) if deepep else None,
    )


def _profile(cluster: Any) -> tuple[Optional[MeasuredCollectives], Optional[DeepEPKernels]]:
    if cluster.network_profile is None:
        return None, None
    gpu, measured, deepep = load_profile(cluster.network_profile)
    if gpu != cluster.gpu.name:
        raise ScenarioError(
            f"cluster.network_profile: {cluster.network_profile} was measured on {gpu}, the cluster's GPU is "
            f"{cluster.gpu.name}; calibrate on {cluster.gpu.name} or drop the profile"
        )
    return measured, deepep


def check_cluster_profile(cluster: Any) -> Optional[MeasuredCollectives]:
    """A cluster's own NCCL curves, if it names a profile measured on its GPU that holds them."""
    return _profile(cluster)[0]


def profile_deepep(cluster: Any) -> Optional[DeepEPKernels]:
    """A cluster's own DeepEP kernels, if its profile holds them."""
    return _profile(cluster)[1]
