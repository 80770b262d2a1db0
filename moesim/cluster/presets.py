"""Cluster presets: real systems a scenario can name (`cluster: {preset: dgx-h100, num_nodes: 4}`)."""

from __future__ import annotations

from typing import Any

from moesim.errors import UnknownPresetError, unknown_name_message

_CLUSTER_PRESETS: dict[str, dict[str, Any]] = {
    # NVIDIA DGX H100 user guide: 8 x H100 SXM over NVSwitch (900 GB/s per GPU both ways),
    # 8 x ConnectX-7 400 Gb/s, one per GPU, on a rail-optimised InfiniBand fabric.
    "dgx-h100": dict(gpus_per_node=8, gpu="H100-SXM", nics_per_node=8, nic_gbps=400, topology="rail_optimized"),
    # DeepSeek-V3 technical report, section 3.1 and DeepEP's README: 8 x H800 per node, NVLink at 200 GB/s per
    # direction (datasheet; DeepEP reaches about 160 GB/s, which moesim's measured NCCL and DeepEP efficiencies
    # give, so the datasheet rate is the input), 400 Gb/s InfiniBand per GPU (about 50 GB/s).
    "hgx-h800": dict(
        gpus_per_node=8,
        gpu="H800",
        nics_per_node=8,
        nic_gbps=400,
        topology="fat_tree",
    ),
    # NVIDIA DGX A100 user guide: 8 x A100 80GB, NVLink 600 GB/s both ways, 8 x HDR 200 Gb/s.
    "dgx-a100": dict(gpus_per_node=8, gpu="A100-80GB", nics_per_node=8, nic_gbps=200, topology="rail_optimized"),
    # NVIDIA DGX B200 datasheet: 8 x B200 over NVLink 5 (1.8 TB/s per GPU both ways), 8 x ConnectX-7 400 Gb/s.
    "dgx-b200": dict(gpus_per_node=8, gpu="B200", nics_per_node=8, nic_gbps=400, topology="rail_optimized"),
    # NVIDIA HGX B300: 8 x B300 over NVLink 5, 8 x ConnectX-8 800 Gb/s.
    "hgx-b300": dict(gpus_per_node=8, gpu="B300", nics_per_node=8, nic_gbps=800, topology="rail_optimized"),
    # NVIDIA GB200 NVL72: 72 Blackwell GPUs in one NVLink domain (1.8 TB/s per GPU both ways), one 400 Gb/s NIC
    # per GPU for the scale-out network. NCCL's tables measure 2 and 4 GB200s, not 72: the rack's NVLink runs at
    # its datasheet rate until a measurement of the whole domain is carried.
    "gb200-nvl72": dict(gpus_per_node=72, gpu="GB200", nics_per_node=72, nic_gbps=400, topology="rail_optimized"),
    # NVIDIA GB300 NVL72: 72 Blackwell Ultra GPUs in one NVLink domain, one ConnectX-8 800 Gb/s NIC per GPU.
    "gb300-nvl72": dict(gpus_per_node=72, gpu="GB300", nics_per_node=72, nic_gbps=800, topology="rail_optimized"),
}


def cluster_preset_names() -> list[str]:
    return list(_CLUSTER_PRESETS)


def cluster_preset(name: str) -> dict[str, Any]:
    """The ClusterSpec fields of a preset (num_nodes is left to the scenario)."""
    key = name.strip().lower()
    if key not in _CLUSTER_PRESETS:
        raise UnknownPresetError(unknown_name_message("cluster preset", name, cluster_preset_names()))
    return dict(_CLUSTER_PRESETS[key])
