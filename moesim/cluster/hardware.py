"""GPU presets: peak compute, memory and interconnect of real accelerators.

Figures are the vendors' datasheet numbers (dense, i.e. without 2:4 sparsity) with the
source beside each. Bandwidths are stated per GPU and per direction unless the name
says otherwise: `scale_up_gb_per_s` is NVLink / Infinity Fabric bytes per second one way,
`nic_gbps` is the network card's line rate in gigabits per second.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from moesim.errors import UnknownPresetError, unknown_name_message


class GpuSpec(BaseModel):
    """One accelerator's peak capabilities."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom-gpu", description="Display name.")
    source: str = Field("", description="Where the figures come from.")
    peak_bf16_tflops: float = Field(..., gt=0, description="Peak dense bf16 tensor-core throughput (TFLOP/s).")
    peak_fp8_tflops: Optional[float] = Field(
        None, gt=0, description="Peak dense fp8 tensor-core throughput (TFLOP/s); null if unsupported."
    )
    hbm_gb: float = Field(..., gt=0, description="Device memory capacity (GB, 10^9 bytes).")
    hbm_tb_per_s: float = Field(..., gt=0, description="Device memory bandwidth (TB/s).")
    scale_up_gb_per_s: float = Field(
        ...,
        gt=0,
        description="Intra-node GPU-to-GPU bandwidth per GPU, one direction (GB/s): NVLink or Infinity Fabric.",
    )
    nic_gbps: float = Field(..., gt=0, description="Typical scale-out NIC line rate per GPU (Gb/s).")
    tdp_watts: Optional[float] = Field(None, gt=0, description="Board power (W).")
    sms: Optional[int] = Field(
        None, gt=0, description="Streaming multiprocessors (AMD: compute units); what communication kernels share."
    )

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * 1e9

    @property
    def peak_bf16_flops(self) -> float:
        return self.peak_bf16_tflops * 1e12


_GPU_PRESETS: dict[str, dict[str, Any]] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOPS bf16 and 1,979 fp8 dense (half the
    # sparse figures), 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s bidirectional; ConnectX-7 400 Gb/s.
    "H100-SXM": dict(
        peak_bf16_tflops=989.4,
        peak_fp8_tflops=1978.9,
        hbm_gb=80,
        hbm_tb_per_s=3.35,
        scale_up_gb_per_s=450,
        nic_gbps=400,
        sms=132,
        tdp_watts=700,
        source="NVIDIA H100 datasheet (SXM5)",
    ),
    # H800 SXM: H100 compute and memory, NVLink cut to 400 GB/s bidirectional. DeepSeek-V3 report
    # section 3.1 and DeepEP measure about 160 GB/s per direction in practice; 400 Gb/s InfiniBand per GPU.
    "H800": dict(
        peak_bf16_tflops=989.4,
        peak_fp8_tflops=1978.9,
        hbm_gb=80,
        hbm_tb_per_s=3.35,
        scale_up_gb_per_s=200,
        nic_gbps=400,
        sms=132,
        tdp_watts=700,
        source="NVIDIA H800 SXM specification; DeepSeek-V3 technical report section 3.1",
    ),
    # NVIDIA H200 datasheet (SXM): H100 compute, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s bidirectional.
    "H200": dict(
        peak_bf16_tflops=989.4,
        peak_fp8_tflops=1978.9,
        hbm_gb=141,
        hbm_tb_per_s=4.8,
        scale_up_gb_per_s=450,
        nic_gbps=400,
        sms=132,
        tdp_watts=700,
        source="NVIDIA H200 datasheet (SXM)",
    ),
    # NVIDIA A100 datasheet (80GB SXM): 312 TFLOPS bf16 dense, no fp8, 2,039 GB/s HBM2e,
    # NVLink 600 GB/s bidirectional; HDR InfiniBand 200 Gb/s per GPU in DGX A100.
    "A100-80GB": dict(
        peak_bf16_tflops=312,
        peak_fp8_tflops=None,
        hbm_gb=80,
        hbm_tb_per_s=2.039,
        scale_up_gb_per_s=300,
        nic_gbps=200,
        sms=108,
        tdp_watts=400,
        source="NVIDIA A100 datasheet (80GB SXM); DGX A100 user guide",
    ),
    # NVIDIA DGX B200 datasheet: 72 PFLOPS fp8 training for 8 GPUs (4.5 dense per GPU), 2.25 PFLOPS
    # bf16 dense, 1,440 GB HBM3e in all (180 GB per GPU), 8 TB/s, NVLink 5 at 1.8 TB/s bidirectional.
    "B200": dict(
        peak_bf16_tflops=2250,
        peak_fp8_tflops=4500,
        hbm_gb=180,
        hbm_tb_per_s=8.0,
        scale_up_gb_per_s=900,
        nic_gbps=400,
        sms=148,
        tdp_watts=1000,
        source="NVIDIA DGX B200 datasheet",
    ),
    # Blackwell Ultra and Grace Blackwell, per GPU, dense, as aiconfigurator's system files give them (ai-dynamo/
    # aiconfigurator, aic-core/src/aiconfigurator_core/systems/{b300_sxm,gb200,gb300}.yaml, from NVIDIA's Blackwell
    # datasheet; memory as nvidia-smi reports it there); NVLink 5 at 900 GB/s a direction; SMs: NVIDIA's "Inside
    # NVIDIA Blackwell Ultra" (160) and the B200's (148); NICs: ConnectX-8 800 Gb/s on HGX B300 and GB300,
    # ConnectX-7 400 Gb/s on GB200 NVL72.
    "B300": dict(
        peak_bf16_tflops=2250,
        peak_fp8_tflops=4500,
        hbm_gb=288.4,
        hbm_tb_per_s=7.75,
        scale_up_gb_per_s=900,
        nic_gbps=800,
        sms=160,
        tdp_watts=1100,
        source="aiconfigurator systems/b300_sxm.yaml (NVIDIA HGX B300 figures); NVIDIA 'Inside Blackwell Ultra'",
    ),
    "GB200": dict(
        peak_bf16_tflops=2500,
        peak_fp8_tflops=5000,
        hbm_gb=198.7,
        hbm_tb_per_s=8.0,
        scale_up_gb_per_s=900,
        nic_gbps=400,
        sms=148,
        tdp_watts=1200,
        source="aiconfigurator systems/gb200.yaml (NVIDIA Blackwell datasheet, GB200 NVL72)",
    ),
    "GB300": dict(
        peak_bf16_tflops=2500,
        peak_fp8_tflops=5000,
        hbm_gb=298.0,
        hbm_tb_per_s=8.0,
        scale_up_gb_per_s=900,
        nic_gbps=800,
        sms=160,
        tdp_watts=1400,
        source="aiconfigurator systems/gb300.yaml (NVIDIA GB300 NVL72 figures); NVIDIA 'Inside Blackwell Ultra'",
    ),
    # AMD Instinct MI300X datasheet: 1,307.4 TFLOPS bf16 and 2,614.9 fp8 dense, 192 GB HBM3 at
    # 5.3 TB/s, Infinity Fabric 896 GB/s aggregate peer bandwidth (7 links x 64 GB/s per direction).
    "MI300X": dict(
        peak_bf16_tflops=1307.4,
        peak_fp8_tflops=2614.9,
        hbm_gb=192,
        hbm_tb_per_s=5.3,
        scale_up_gb_per_s=448,
        nic_gbps=400,
        sms=304,
        tdp_watts=750,
        source="AMD Instinct MI300X datasheet",
    ),
}


def gpu_preset_names() -> list[str]:
    """Names of all GPU presets."""
    return list(_GPU_PRESETS)


def gpu_preset(name: str, **overrides: Any) -> GpuSpec:
    """The `GpuSpec` of preset `name` (case-insensitive), with any fields overridden."""
    by_lower = {key.lower(): key for key in _GPU_PRESETS}
    key = by_lower.get(name.strip().lower())
    if key is None:
        raise UnknownPresetError(unknown_name_message("GPU preset", name, gpu_preset_names()))
    return GpuSpec(**{"name": key, **_GPU_PRESETS[key], **overrides})
