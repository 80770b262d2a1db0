"""Plain FP8 GEMMs read from DeepGEMM's measured H100 table: development shapes only, its held-out error as
shipped, and the cost model reading it where it has the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cluster.hardware import gpu_preset
from moesim.cost import model_for_gpu
from moesim.cost.fp8_gemms import MeasuredGemms, errors_path, read_table, shipped_fp8_gemms, table_path
from moesim.validation.gemm_tables import FP8_KERNEL, gemm_rows, in_training_domain, split
from moesim.validation.held_out import is_held_out_gemm


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_the_shipped_table_is_the_development_shapes_of_the_measured_one(gpu: str) -> None:
    table = read_table(table_path(gpu), "")
    development = [row for row in split(gemm_rows(gpu), False) if row.dtype == FP8_KERNEL]
    assert sorted(table.rows) == sorted((row.m, row.k, row.n, pytest.approx(row.seconds)) for row in development)
    assert not any(is_held_out_gemm(cols, inner) for _, inner, cols, _ in table.rows)


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_the_held_out_error_it_quotes_is_what_it_makes_on_the_held_out_shapes(gpu: str) -> None:
    quoted = json.loads(errors_path(gpu).read_text())["held_out"]
    table = read_table(table_path(gpu), "")
    held = [row for row in split(gemm_rows(gpu), True) if row.dtype == FP8_KERNEL and in_training_domain(row)]
    signed = np.array([float(table.seconds(row.m, row.k, row.n)) / row.seconds - 1 for row in held])
    assert quoted["rows"] == len(held) > 1000
    assert quoted["median"] == pytest.approx(float(np.median(np.abs(signed))))
    assert quoted["p90"] == pytest.approx(float(np.percentile(np.abs(signed), 90)))
    assert quoted["median"] < 0.10 and quoted["p90"] < 0.25  # the bar docs/cost-model.md states for it


def test_rates_interpolate_along_rows_and_between_shapes() -> None:
    """Two measured weight shapes: a measured point reads back exactly, rows between two points take the rate in
    between (log rows), rows beyond the last keep its rate, and a shape between the two weights their rates."""
    rows = ((1024, 1024, 1024, 2 * 1024**3 / 400e12), (4096, 1024, 1024, 2 * 4096 * 1024**2 / 800e12))
    rows += ((1024, 4096, 4096, 2 * 1024 * 4096**2 / 600e12), (4096, 4096, 4096, 2 * 4096**3 / 1000e12))
    table = MeasuredGemms(rows, "test")
    assert float(table.seconds(1024, 1024, 1024)) == pytest.approx(rows[0][3])
    assert float(table.rate(np.array([2048.0]), 1024, 1024)[0]) == pytest.approx(600e12)
    assert float(table.rate(np.array([65536.0]), 1024, 1024)[0]) == pytest.approx(800e12)
    between = float(table.rate(np.array([4096.0]), 2048, 2048)[0])
    assert 800e12 < between < 1000e12
    assert float(table.seconds(0, 1024, 1024)) == 0.0


def test_hopper_gpus_read_the_tables_from_their_fewest_rows() -> None:
    h100, h800, h200, b200 = (model_for_gpu(gpu_preset(name)) for name in ("H100-SXM", "H800", "H200", "B200"))
    table = shipped_fp8_gemms("H100-SXM")
    assert table is not None and h100.fp8_gemms is table and b200.fp8_gemms is None
    assert h800.fp8_gemms is not None and h800.fp8_gemms.rows == table.rows  # the H100's, derived
    assert h200.fp8_gemms is not None and h200.fp8_gemms.rows != table.rows  # its own
    assert h200.source_of("fp8_dense").startswith("measured: DeepGEMM's blockwise FP8 GEMMs on an H200")
    assert "held-out error" in h100.source_of("fp8_dense") and h100.source_of("fp8_dense").startswith("measured")
    assert h800.source_of("fp8_dense").startswith("derived from H100 (")
    rows = np.array([4096.0, 16.0])
    seconds = h100.gemm_seconds(rows, 7168, 2048, fp8=True)
    assert seconds[0] == pytest.approx(float(table.seconds(4096, 7168, 2048)))
    speedup_model = h100.gemm_seconds(16, 7168, 2048) / h100.fp8_speedup(16, 7168, 2048)
    assert seconds[1] == pytest.approx(float(speedup_model))  # decode-sized: below the table's 256 rows
    # the backward: the input gradient a GEMM of the transposed shape, the weight gradient contracts over the rows
    backward = float(h100.gemm_backward_seconds(4096, 7168, 2048, fp8=True))
    expected = float(table.seconds(4096, 2048, 7168)) + float(table.seconds(7168, 4096, 2048))
    assert backward == pytest.approx(expected)
    assert float(h100.gemm_weight_grad_seconds(4096, 7168, 2048, fp8=True)) == pytest.approx(
        float(table.seconds(7168, 4096, 2048))
    )
