"""GPU presets carry the datasheet figures."""

from __future__ import annotations

import pytest

from moesim.cluster import gpu_preset, gpu_preset_names
from moesim.errors import UnknownPresetError


def test_presets_present() -> None:
    assert set(gpu_preset_names()) >= {"H100-SXM", "H800", "H200", "A100-80GB", "B200", "MI300X"}
    for name in gpu_preset_names():
        gpu = gpu_preset(name)
        assert gpu.source and gpu.peak_bf16_tflops > 0 and gpu.hbm_gb > 0


def test_datasheet_figures() -> None:
    h100 = gpu_preset("H100-SXM")  # NVIDIA H100 datasheet: 989 TFLOPS bf16 dense, 80 GB, 3.35 TB/s
    assert (h100.peak_bf16_tflops, h100.hbm_gb, h100.hbm_tb_per_s) == (989.4, 80, 3.35)
    assert h100.peak_fp8_tflops == pytest.approx(2 * h100.peak_bf16_tflops, rel=1e-3)
    assert gpu_preset("H800").scale_up_gb_per_s < h100.scale_up_gb_per_s  # export-limited NVLink
    assert gpu_preset("H200").hbm_gb == 141  # NVIDIA H200 datasheet
    assert gpu_preset("A100-80GB").peak_fp8_tflops is None  # Ampere has no fp8
    assert gpu_preset("MI300X").hbm_gb == 192  # AMD MI300X datasheet


def test_case_insensitive_and_unknown() -> None:
    assert gpu_preset("h100-sxm").name == "H100-SXM"
    with pytest.raises(UnknownPresetError, match="did you mean 'H100-SXM'"):
        gpu_preset("H100-SMX")
