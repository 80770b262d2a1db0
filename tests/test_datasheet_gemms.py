"""GPUs without measurements borrow the measured H100's tile-and-wave GEMM fits at their own datasheet peak,
bandwidth and SM count (issue 29: a rows-only efficiency curve made small GEMMs faster on a datasheet A100 than
on the measured H100)."""

from __future__ import annotations

import pytest

from moesim.cluster import gpu_preset
from moesim.cost import model_for_gpu

SHAPES = [(rows, inner, cols) for rows in (16, 256, 4096, 32768) for inner, cols in ((1024, 4096), (4096, 14336))]


def test_a_datasheet_copy_of_the_h100_times_gemms_as_the_measured_h100_does() -> None:
    """The borrowing is the identity on the donor: a GPU with the H100's datasheet figures under another name."""
    measured = model_for_gpu(gpu_preset("H100-SXM"))
    copy = model_for_gpu(gpu_preset("H100-SXM").model_copy(update={"name": "my-h100"}))
    assert copy.dense is not None and "H100-SXM's measured GEMM fits" in copy.source_of("dense_gemm")
    for rows, inner, cols in SHAPES:
        assert float(copy.gemm_seconds(rows, inner, cols)) == pytest.approx(
            float(measured.gemm_seconds(rows, inner, cols))
        )
        assert copy.grouped.seconds([rows] * 8, inner, cols, 2) == pytest.approx(
            measured.grouped.seconds([rows] * 8, inner, cols, 2)
        )


def test_the_a100_runs_at_its_own_peak_bandwidth_and_sms() -> None:
    a100, h100 = gpu_preset("A100-80GB"), gpu_preset("H100-SXM")
    model, donor = model_for_gpu(a100), model_for_gpu(h100)
    assert model.dense.peak_flops == a100.peak_bf16_tflops * 1e12 and model.dense.sms == a100.sms == 108
    assert model.dense.bandwidth_bytes_per_s == pytest.approx(
        donor.dense.bandwidth_bytes_per_s * a100.hbm_tb_per_s / h100.hbm_tb_per_s
    )
    # a large compute-bound GEMM: the peak ratio, within the two GPUs' wave quantisation (132 against 108 SMs)
    ratio = float(model.gemm_seconds(16384, 8192, 8192)) / float(donor.gemm_seconds(16384, 8192, 8192))
    assert ratio == pytest.approx(h100.peak_bf16_tflops / a100.peak_bf16_tflops, rel=0.10)
    # no shape is faster on the A100 than on the H100 (the rows-only curve made small ones so)
    for rows, inner, cols in SHAPES:
        assert float(model.gemm_seconds(rows, inner, cols)) >= float(donor.gemm_seconds(rows, inner, cols))
