"""Hardware presets, cluster topologies and expert placement."""

from moesim.cluster.hardware import GpuSpec, gpu_preset, gpu_preset_names

__all__ = ["GpuSpec", "gpu_preset", "gpu_preset_names"]
