"""The shipped GPU profiles against the measured kernel tables: the development rows they were fitted to, and the
held-out rows (whole shapes, `validation/held_out/kernel_shapes.json`) they never saw.

Tables: `moesim/cost/tables/<device>/` (NVIDIA H200 and H100 SXM, 2026-11-26). Errors are
|predicted / measured - 1|; the bounds are the GPU cost-model issue's (median 8%, 90th percentile 20%), met on the
development rows; the held-out errors are what the profiles record and `profiles show` prints, pinned here.
The kernel models are compared as fitted (the tables' times include their host synchronisation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cluster.hardware import gpu_preset
from moesim.cost import model_for_gpu
from moesim.cost.build import ffn_backward_seconds
from moesim.cost.fp8 import Fp8Speedup
from moesim.cost.gemm_fit import dense_errors, fit_dense_model, relative_errors
from moesim.cost.grouped import GroupedGemmModel
from moesim.cost.kernel_tables import TABLES, KernelTables, read_tables
from moesim.cost.shipped_profiles import SHIPPED_PROFILES, shipped_profile
from moesim.cost.shipping import held_out_rows

DEVICES = {"H200": "h200-2026-11-26", "H100-SXM": "h100-2026-11-26"}


def shipped_tables(folder: str, held_out: bool = False) -> KernelTables:
    """A device's development rows (what its profile was fitted to), or with `held_out` the rows kept from it."""
    return read_tables(TABLES / folder, held_out_rows(folder), held_out=held_out)


def _stats(errors: np.ndarray) -> tuple[float, float]:
    return float(np.median(np.abs(errors))), float(np.percentile(np.abs(errors), 90))


@pytest.mark.parametrize("gpu", DEVICES)
def test_gemm_model_reproduces_every_measured_gemm(gpu: str) -> None:
    tables = shipped_tables(DEVICES[gpu])
    dense = GroupedGemmModel.from_dict(shipped_profile(gpu)["dense_gemm"])
    assert len(tables.gemm) == 44  # of 66: Mixtral's expert FFN held out
    median, p90 = _stats(dense_errors(dense, tables.gemm))
    assert median <= 0.08 and p90 <= 0.20, (median, p90)
    # shape-aware: at 1,024 rows DeepSeek-V3's expert up-projection runs near 56% of peak, Qwen3's down-projection
    # near 10%
    rates = {
        (inner, cols): 2 * rows * inner * cols / float(dense.dense_seconds(rows, inner, cols)) / 989.4e12
        for rows, inner, cols, _ in tables.gemm
        if rows == 1024
    }
    assert rates[(7168, 4096)] > 0.5 and rates[(768, 2048)] < 0.2


@pytest.mark.parametrize("gpu", DEVICES)
def test_grouped_model_reproduces_every_measured_grouped_gemm(gpu: str) -> None:
    tables = shipped_tables(DEVICES[gpu])
    grouped = GroupedGemmModel.from_dict(shipped_profile(gpu)["grouped_gemm"])
    samples = [
        ("forward", [rows] * groups, inner, cols, seconds) for groups, rows, inner, cols, seconds in tables.grouped
    ]
    assert len(samples) == 32  # of 40
    median, p90 = _stats(relative_errors(grouped, samples))
    assert median <= 0.08 and p90 <= 0.20, (median, p90)
    # 128 experts x 128 rows of 2048x1536: one grouped GEMM is several times faster than 128 GEMMs one by one
    dense = GroupedGemmModel.from_dict(shipped_profile(gpu)["dense_gemm"])
    assert grouped.seconds([128] * 128, 2048, 1536) * 5 < 128 * float(dense.dense_seconds(128, 2048, 1536))
    # skew by construction: padded tiles of many small groups cost more than few full ones; idle experts' weights
    # are not read (so the same rows on one expert beat 64 weight-bound experts)
    uniform = grouped.seconds([128] * 64, 7168, 4096)
    assert grouped.seconds([128 * 64 - 63 * 16] + [16] * 63, 7168, 4096) > uniform
    assert grouped.seconds([128 * 64] + [0] * 63, 7168, 4096) < 0.6 * uniform


def test_backward_models_reproduce_the_measured_backwards() -> None:
    for gpu in DEVICES:  # a SwiGLU FFN under autograd: input and weight gradients of both projections
        profile, tables = shipped_profile(gpu), shipped_tables(DEVICES[gpu])
        dense = GroupedGemmModel.from_dict(profile["dense_gemm"])
        errors = np.array(
            [
                float(
                    ffn_backward_seconds(
                        dense, rows, hidden, inner, tables.copy_bytes_per_s, profile["ffn_backward_overhead_s"]
                    )
                )
                / backward
                - 1
                for rows, hidden, inner, _, backward in tables.ffn_backward
            ]
        )
        median, _ = _stats(errors)
        assert median <= 0.10, (gpu, median)  # the development rows: two FFN shapes (H100 8.8%, H200 3.1%)
    # the grouped backward (input + weight gradients) measured on the H100: 2.4-4.8x its forward
    tables = shipped_tables(DEVICES["H100-SXM"])
    grouped = GroupedGemmModel.from_dict(shipped_profile("H100-SXM")["grouped_gemm"])
    samples = [
        ("backward", [rows] * groups, inner, cols, bf16 * ratio)
        for groups, rows, inner, cols, bf16, _, ratio in tables.grouped_fp8
    ]
    median, p90 = _stats(relative_errors(grouped, samples))
    assert median <= 0.08 and p90 <= 0.22, (median, p90)
    ratios = [
        (grouped.seconds(r, c, i) + grouped.weight_grad_seconds(r, i, c)) / grouped.seconds(r, i, c)
        for _, r, i, c, _ in samples
    ]
    assert 2.0 < min(ratios) and max(ratios) > 3.5


def test_fp8_speedups_follow_the_measurements() -> None:
    tables = shipped_tables(DEVICES["H100-SXM"])
    grouped = Fp8Speedup.from_list([(i, c, r, bf16 / fp8) for _, r, i, c, bf16, fp8, _ in tables.grouped_fp8])
    median, p90 = _stats(grouped.leave_one_out_errors())
    assert median <= 0.12 and p90 <= 0.25, (median, p90)
    # the measured kernel-choice effect is kept: fp8 slower than bf16 at 512 rows per group of Qwen3's shapes
    assert grouped.speedup(512, 2048, 1536) < 0.75 and grouped.speedup(2048, 7168, 4096) > 1.25
    cost = model_for_gpu(gpu_preset("H100-SXM"))
    assert float(cost.fp8_speedup(16384, 7168, 4096)) == pytest.approx(1.818, rel=1e-3)  # the table's own point
    assert 1.3 < float(cost.gemm_seconds(4096, 7168, 4096) / cost.gemm_seconds(4096, 7168, 4096, fp8=True)) < 1.9


def test_shipped_dense_fit_is_what_the_build_command_fits() -> None:
    tables = shipped_tables(DEVICES["H200"])
    shipped = GroupedGemmModel.from_dict(shipped_profile("H200")["dense_gemm"])
    refitted = fit_dense_model(tables.gemm, 989.4e12, tables.copy_bytes_per_s, 132)
    rows = np.array([row[0] for row in tables.gemm], dtype=float)
    for r, inner, cols, _ in tables.gemm:
        assert float(refitted.dense_seconds(r, inner, cols)) == pytest.approx(
            float(shipped.dense_seconds(r, inner, cols)), rel=1e-3
        )
    assert rows.size == 44
    recorded = shipped_profile("H200")["errors"]["dense_gemm"]
    assert recorded["median"] == pytest.approx(_stats(dense_errors(shipped, tables.gemm))[0], rel=1e-6)
    # fitted to every row, the model is another one: the held-out rows were kept from the shipped fit
    every = read_tables(TABLES / DEVICES["H200"])
    with_them = fit_dense_model(every.gemm, 989.4e12, every.copy_bytes_per_s, 132)
    assert with_them.as_dict() != shipped.as_dict()


@pytest.mark.parametrize(
    ("gpu", "part", "median", "p90"),
    [
        ("H100-SXM", "dense_gemm", 0.169, 0.199),
        ("H100-SXM", "grouped_gemm", 0.041, 0.058),
        ("H100-SXM", "attention", 0.075, 0.842),
        ("H200", "dense_gemm", 0.034, 0.078),
        ("H200", "grouped_gemm", 0.061, 0.161),
        ("H200", "attention", 0.039, 0.788),
    ],
)
def test_held_out_errors_are_the_shipped_models_on_shapes_it_never_saw(
    gpu: str, part: str, median: float, p90: float
) -> None:
    """The profiles' recorded held-out errors, recomputed from the held-out rows with the shipped models, and the
    figures docs/cost-model.md quotes (Mixtral 8x7B's expert FFN and the 32/8 attention layout held out)."""
    profile, held = shipped_profile(gpu), shipped_tables(DEVICES[gpu], held_out=True)
    recorded = profile["held_out_errors"][part]
    assert (round(recorded["median"], 3), round(recorded["p90"], 3)) == (median, p90)
    if part == "dense_gemm":
        dense = GroupedGemmModel.from_dict(profile["dense_gemm"])
        assert recorded["median"] == pytest.approx(_stats(dense_errors(dense, held.gemm))[0], rel=1e-9)
        assert recorded["count"] == len(held.gemm) == 22
    if part == "grouped_gemm":
        grouped = GroupedGemmModel.from_dict(profile["grouped_gemm"])
        samples = [("forward", [r] * g, i, c, sec) for g, r, i, c, sec in held.grouped]
        assert recorded["median"] == pytest.approx(_stats(relative_errors(grouped, samples))[0], rel=1e-9)
    assert "held-out error" in model_for_gpu(gpu_preset(gpu)).source_of(part)


def test_each_gpu_preset_says_what_its_model_rests_on() -> None:
    assert set(SHIPPED_PROFILES) == {"H200", "H100-SXM", "H800"}
    h200, h100, h800 = (model_for_gpu(gpu_preset(name)) for name in ("H200", "H100-SXM", "H800"))
    assert "measured" in h200.source_of("dense_gemm") and "h200-2026-11-26" in h200.source_of("dense_gemm")
    assert "derived" in h200.source_of("grouped_backward")  # the H200 has no grouped backward table
    assert "measured" in h100.source_of("grouped_backward")
    assert "derived from H100-SXM" in h800.source_of("dense_gemm") and "derived" in h800.source
    assert h800.gemm_seconds(4096, 7168, 4096) == h100.gemm_seconds(4096, 7168, 4096)
    b200 = model_for_gpu(gpu_preset("B200"))
    # no measurement of the B200: the H100's measured GEMM fits at its datasheet figures, said so
    assert b200.dense is not None and b200.dense.peak_flops == gpu_preset("B200").peak_bf16_flops
    assert "H100-SXM's measured GEMM fits" in b200.source_of("dense_gemm") and "not checked" in b200.source_of(
        "dense_gemm"
    )
    assert "assumed" in b200.source_of("anything") or "datasheet" in b200.source
    # a changed preset is not the measured GPU any more: datasheet, labelled so
    tuned = model_for_gpu(gpu_preset("H100-SXM", peak_bf16_tflops=1200))
    assert tuned.dense.peak_flops == 1200e12 and "datasheet" in tuned.source


def test_a_calibrated_profile_replaces_the_shipped_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moesim.scenario import scenario_from_dict
    from moesim.sim.device import cost_model_for

    profile = json.loads((shipped_profile("H100-SXM") and json.dumps(shipped_profile("H100-SXM"))) or "{}")
    profile.update(device="my-gpu", source="measured by moesim calibrate on my GPU")
    path = tmp_path / "my-gpu.json"
    path.write_text(json.dumps(profile))
    base = {
        "model": "mixtral-8x7b",
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "training", "seq_len": 512, "global_batch_size": 8},
    }
    assert "h100-2026-11-26" in cost_model_for(scenario_from_dict(base)).source
    replaced = cost_model_for(scenario_from_dict({**base, "simulation": {"cost_profile": str(path)}}))
    assert "my GPU" in replaced.source


def test_shipped_router_and_permutation_are_the_executors_device_work() -> None:
    """Each GPU's phase models are its own executor measurements (its single-device validation) as device work: the
    fixed host terms give way to the kernels the phase launches (counted on an H100: router 10, permutation 15,
    un-permutation 4), 4 us each in a stream; the per-element terms are the GPU's own (the H100's sort keys 1.03x
    the H200's, not the 1.41x their bandwidths would say)."""
    from pathlib import Path

    from moesim.cost.shipping import LAUNCHES

    counted = json.loads(
        (Path(__file__).resolve().parent.parent / "validation/NVIDIA-H100-80GB-HBM3/kernel_counts.json").read_text()
    )
    decode = next(layer["kernels"] for layer in counted["layers"] if layer["model"] == "mixtral-8x7b")
    assert (decode["router"], decode["permute"], decode["unpermute"]) == (10, 15, 4) == tuple(LAUNCHES.values())
    for gpu, device in (("H100-SXM", "NVIDIA-H100-80GB-HBM3"), ("H200", "NVIDIA-H200")):
        calibrated = json.loads(
            (Path(__file__).resolve().parent.parent / f"validation/profiles/{device}.json").read_text()
        )
        cost = model_for_gpu(gpu_preset(gpu))
        router, permute = cost.coefficients("router:top_k"), cost.coefficients("permute")
        assert router["1"] == pytest.approx(LAUNCHES["router"] * 4e-6) and router["autograd"] == 0.0
        assert router["router GEMM seconds"] == 1.0
        measured = dict(
            zip(calibrated["phase_fit"]["permute"]["features"], calibrated["phase_fit"]["permute"]["coefficients"])
        )
        ratio = calibrated["memory_bytes_per_s"] / shipped_tables(DEVICES[gpu]).copy_bytes_per_s  # within 1.5%
        assert permute["sort keys"] == pytest.approx(measured["sort keys"] * ratio, rel=1e-9) and abs(ratio - 1) < 0.015
        assert cost.source_of("moe_kernels").startswith("measured")


@pytest.mark.parametrize(
    "gpu, plain, grouped_gap, taken, bounds",
    [("H100-SXM", 18.6e-6, 21.5e-6, 19.7e-6, (0.05, 0.11)), ("H200", 26.2e-6, 27.5e-6, 26.9e-6, (0.10, 0.17))],
)
def test_the_host_synchronisation_taken_off_the_tables_is_measured(
    gpu: str, plain: float, grouped_gap: float, taken: float, bounds: tuple[float, float]
) -> None:
    """Each GPU's table GEMMs timed again back to back in a busy stream (`in_stream_bf16.csv`, 2026-11-26, its
    development rows): the tables' host-synchronised figures hold 19 us (plain) and 22 us (grouped) more on the
    H100, 26 and 27 us on the H200, for kernels under 100 us; each profile takes off its measured median. The
    grouped model, fitted to the tables, then meets the stream times: on the H100 within 4.8% (median) and 11.0%
    (90th); on the H200 within 9.5% and 16.3%, where its kernel runs 16 rows a group slower than 128 (a kernel
    choice no tile model makes)."""
    tables = shipped_tables(DEVICES[gpu])
    assert len(tables.in_stream) == 76  # of 106
    gaps = {
        kind: np.median([t - s for k, *_, t, s in tables.in_stream if k == kind and s < 100e-6])
        for kind in ("gemm_bf16", "grouped")
    }
    assert gaps["gemm_bf16"] == pytest.approx(plain, abs=0.1e-6)
    assert gaps["grouped"] == pytest.approx(grouped_gap, abs=0.1e-6)
    assert shipped_profile(gpu)["timing_overhead_s"] == pytest.approx(taken, abs=0.1e-6)
    grouped = model_for_gpu(gpu_preset(gpu)).grouped  # in the stream: the overhead taken off
    stream = [
        ("forward", [rows] * groups, inner, cols, seconds)
        for kind, groups, rows, inner, cols, _, seconds in tables.in_stream
        if kind == "grouped"
    ]
    median, p90 = _stats(relative_errors(grouped, stream))
    assert median <= bounds[0] and p90 <= bounds[1], (median, p90)


@pytest.mark.parametrize("gpu", DEVICES)
def test_attention_costs_each_query_block_and_fits_prompts_and_decode_timed_in_a_stream(gpu: str) -> None:
    """Scaled dot-product attention on each GPU in a busy stream (`attention_in_stream.csv`): prompts of 512 to
    8,192 tokens fit a fixed cost, whole causal tiles at one rate and each query block's own cost (short prompts
    run at 44% of peak, long ones at 62%); decode batches that fill the GPU read their KV caches at the copy
    bandwidth. Small decode batches with long caches are PyTorch's kernel without split-KV (an engine's splits the
    cache over the SMs): left out of the check, and said so. The development rows are the 32/4 layout's (two prompts
    and its decode batches; the 32/8 layout is held out): with two prompts in a stream the fixed cost is fitted at
    22-23 us, which overcosts short prompts of the held-out layout (held-out p90 79-84%, the test above)."""
    from moesim.cost.kernel_tables import causal_attention_flops, causal_query_blocks
    from moesim.cost.model import causal_tile_share
    from moesim.models import model_preset

    tables = shipped_tables(DEVICES[gpu])
    cost = model_for_gpu(gpu_preset(gpu))
    assert cost.attention_overhead_s < 25e-6 and 0.5 < cost.attention_efficiency < 0.7  # every row's fit: 7-8 us
    errors = []
    for kind, sequences, heads, kv_heads, _, context, seconds in tables.attention_in_stream:
        if kind == "prefill":
            flops = causal_attention_flops(sequences, heads, context, 128) * 2 * causal_tile_share(context)
            predicted = cost.attention_seconds(flops, causal_query_blocks(sequences, heads, context))
        elif sequences * kv_heads >= 132:  # enough heads of sequences to fill the SMs
            flops = 4.0 * sequences * heads * context * 128
            kv = sequences * kv_heads * context * 128 * 2 * 2
            predicted = max(cost.attention_seconds(flops), cost.memory_seconds(kv))
        else:
            continue
        errors.append(predicted / seconds - 1)
    assert len(errors) == 6
    median, p90 = _stats(np.array(errors))
    assert median <= 0.08 and p90 <= 0.15, (median, p90)  # H100 1.7%, 8.3%; H200 2.5%, 7.0%
    assert causal_tile_share(512) == pytest.approx(5 / 8) and causal_tile_share(1 << 20) == pytest.approx(0.5, 1e-3)
    assert model_preset("mixtral-8x7b").attention_head_dim == 128
