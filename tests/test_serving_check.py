"""Serving iterations of real decoder layers against moesim's `IterationCost` (`moesim.validation.serving_check`).

On the CPU the check runs a tiny model end to end; the H100's measurements (`validation/NVIDIA-H100-80GB-HBM3/
serving.json`, 2026-11-26: 38 iterations of four Mixtral 8x7B and Qwen3-30B-A3B layers, bf16) are held to the
current cost model's predictions, made afresh here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moesim.serving.checked import SERVING_CHECKS
from moesim.validation.serving_check import QUICK_CASES, run_check
from moesim.validation.serving_check_report import compared, errors, render

VALIDATION = Path(__file__).resolve().parent.parent / "validation"
H100 = VALIDATION / "NVIDIA-H100-80GB-HBM3" / "serving.json"


def test_the_check_runs_decoder_layers_and_times_their_parts_on_the_cpu() -> None:
    rows = run_check(QUICK_CASES, torch.device("cpu"), "H100-SXM", progress=False)
    assert [row["label"] for row in rows] == [
        "8 decode @ 128",
        "2 x 64 prompt",
        "4 decode @ 64 + 1 x 32 prompt",
    ]
    for row, case in zip(rows, QUICK_CASES):
        measured = row["measured"]
        for part in ("attention", "moe", "head"):  # each within the iteration (medians over five noisy CPU runs)
            assert 0 < measured[part] < measured["iteration"]
        assert measured["moe.experts"] < measured["moe"]
        tokens = case.decode + case.prefill_tokens
        assert [sum(layer) for layer in measured["expert_rows"]] == [2 * tokens] * 4  # tiny-moe routes top-2
        assert row["predicted"]["iteration"] > row["predicted"]["attention"] > 0


def test_serving_iterations_measured_on_an_h100_meet_the_prediction() -> None:
    """Median 3.0%, p90 9.7% (signed -2.2%; with the profile fitted without the held-out kernel shapes): decode
    batches of 1 to 896 at 512 to 8,192 cached tokens, prompts of 512 to 16,384 tokens and mixed iterations, within
    the single-device validation's targets (5%, 15%). The largest
    misses are named in docs/serving.md: the grouped GEMM at about 128 rows an expert (1,024 routed rows of
    Mixtral: 0.75x), Qwen3's single 512-token prompt (1.21x)."""
    document = json.loads(H100.read_text())
    rows = compared(document)
    assert len(rows) == 38
    summary = errors(rows)
    # the README's figures (development: the model was changed against these iterations), within the targets
    assert (round(summary["median"], 3), round(summary["p90"], 3)) == (0.030, 0.097), summary
    assert summary["median"] <= 0.05 and summary["p90"] <= 0.15, summary
    # the iterations that fill the GPU, where an engine spends its time: median 3.6%
    full = [row for row in rows if row["measured_ms"] > 9]
    assert len(full) >= 12 and np.median([abs(row["ratio"] - 1) for row in full]) <= 0.05
    # attention apart, where the batch fills the GPU: decode at 512-8,192 cached tokens within 5%, prompts of 512
    # to 8,192 tokens within 42%: the attention fitted without the held-out 32/8 layout rests on two prompts timed in
    # a stream, and overcosts short ones (1.41 at one 512-token prompt, 1.02 at 8,192; held-out p90 84%, docs/
    # cost-model.md); before the refit, on every row, 1.19 and 3%
    filled = [row for row in rows if row["measured_ms"] > 6]
    assert all(abs(row["attention_ratio"] - 1) <= 0.05 for row in filled if row["kind"] == "decode")
    assert all(abs(row["attention_ratio"] - 1) <= 0.42 for row in filled)
    assert "Iteration error, development (" in render(document) and "held out" not in render(document)
    # what `plan --serve` and `serve` tell users of the H100's iteration times
    check = SERVING_CHECKS["H100-SXM"]
    assert check.iterations == 38 and check.device == document["device"]
    assert (check.median, check.p90) == (round(summary["median"], 3), round(summary["p90"], 3))


def test_the_same_iterations_on_an_h200_meet_its_prediction_but_for_its_small_grouped_gemms() -> None:
    """The H200 (`validation/NVIDIA-H200/serving.json`, 2026-11-26), predicted with its shipped profile (fitted
    without the held-out kernel shapes): median 6.7%, p90 15.5%, mostly short (signed -6.4%). The iterations over
    9 ms: within 5% at the median; below, the H200's grouped GEMM at a few rows an expert runs slower than at 128
    (its kernels in a stream: 8 x 16 rows of Mixtral's up projection 678 us, 8 x 128 rows 529 us), which moesim's
    tile model, monotonic in rows, cannot follow."""
    document = json.loads((VALIDATION / "NVIDIA-H200" / "serving.json").read_text())
    rows = compared(document)
    assert len(rows) == 38
    summary = errors(rows)
    # the README's figures: the H200 misses both targets (5%, 15%), mostly short (its small grouped GEMMs)
    assert (round(summary["median"], 3), round(summary["p90"], 3)) == (0.067, 0.155), summary
    assert summary["median"] > 0.05 and summary["p90"] > 0.15 and summary["signed_median"] < 0, summary
    check = SERVING_CHECKS["H200"]
    assert check.device == document["device"]
    assert (check.median, check.p90) == (round(summary["median"], 3), round(summary["p90"], 3))
    full = [row for row in rows if row["measured_ms"] > 9]
    assert np.median([abs(row["ratio"] - 1) for row in full]) <= 0.05


def test_device_operations_are_counted_in_the_phase_that_launched_them() -> None:
    """`kernel_counts.phase_counts` on a made-up trace: a kernel counts in the phase around the host call that
    launched it (matched by correlation), not where it ran; host-only ranges count nothing."""
    from moesim.validation.kernel_counts import phase_counts

    events = [
        {"cat": "user_annotation", "name": "moe.router", "ts": 0, "dur": 10},
        {"cat": "user_annotation", "name": "moe.permute", "ts": 10, "dur": 10},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 2, "dur": 1, "args": {"correlation": 1}},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 12, "dur": 1, "args": {"correlation": 2}},
        {"cat": "cuda_runtime", "name": "cudaMemsetAsync", "ts": 14, "dur": 1, "args": {"correlation": 3}},
        {"cat": "kernel", "name": "gemm", "ts": 30, "dur": 5, "args": {"correlation": 1}},  # runs after the range
        {"cat": "kernel", "name": "sort", "ts": 40, "dur": 5, "args": {"correlation": 2}},
        {"cat": "gpu_memset", "name": "Memset", "ts": 45, "dur": 1, "args": {"correlation": 3}},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 2, "dur": 3},
    ]
    assert phase_counts(events) == {"router": 1, "permute": 2}


def test_serving_figures_say_how_their_gpu_was_checked() -> None:
    """`serve` and `plan --serve` say what a GPU's iteration times rest on and how they were checked: a checked
    GPU by its check, a derived profile by the GPU it derives from, a datasheet one as unchecked."""
    from moesim.serving.checked import SERVING_CHECKS, checked_words

    assert checked_words("H100-SXM").startswith("checked on one NVIDIA-H100-80GB-HBM3, 38 serving iterations")
    assert "3.0% at the median, 9.7% at the 90th percentile" in checked_words("H100-SXM")
    derived = checked_words("H800", "derived from H100-SXM measurements (measured kernel tables h100-2026-11-26)")
    assert derived.startswith("not checked on this GPU; the H100-SXM it derives from: on one NVIDIA-H100")
    assert checked_words("B200", "datasheet peak x assumed efficiency curve").startswith("not checked on this GPU as")
    assert set(SERVING_CHECKS) == {"H100-SXM", "H200"}
