"""DeepSeek's training chunk pair (profile-data train.json) read by kernel class, and moesim's prediction beside it."""

from __future__ import annotations

import pytest

from moesim.validation.trace_kernels import by_role, kernel_class, summarise
from moesim.validation.train_pair import TABLE, measured_pair, predicted_pair, table


@pytest.mark.parametrize(
    "name, label",
    [  # names as DeepSeek's trace has them (train.json)
        ("void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 8, 2, 16, 24>(int4*, float*)", "communication"),
        ("void dpsk::ep::internode::cached_notify<false>(int, int)", "communication"),
        ("void cutlass::device_kernel<dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel>(x)", "gemm"),
        ("sm90_xmma_gemm_bf16f32_bf16f32_f32_nt_n_tilesize128x128x64_warpgroupsize1x1x1_execute", "gemm"),
        ("void cutlass::device_kernel<flash::FlashAttnBwd<flash::CollectiveMainloopBwd<2>>>(x)", "attention"),
        ("void cuda::per_channel_cast_and_transpose<256, 128, true, true, true, false, true>(void const*)", "fp8_cast"),
        ("void dpsk::grouped_gemm::cuda::utils::transpose<512, 128, 4, 4>(unsigned char const*)", "fp8_cast"),
        ("void cuda::swiglu_forward_with_weight_and_per_token_cast_to_fp8_with_channels_impl<x>(y)", "activation"),
        ("void layer_norm::ln_fwd_kernel<layer_norm::Kernel_traits<__nv_bfloat16, 7168u>>(x)", "norm"),
        ("rotary_kernel", "rope"),
        ("void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(x)", "router"),
        ("void cuda::reduce_fused_impl<__nv_bfloat16, false, false>(int4 const*)", "permutation"),
        ("_copy_tensor_kernel", "other"),
        ("Memcpy DtoD (Device -> Device)", "other"),
    ],
)
def test_kernel_classes(name: str, label: str) -> None:
    assert kernel_class(name) == label


def test_streams_busy_time_span_and_role() -> None:
    events = [
        {"ph": "X", "cat": "kernel", "name": "gemm_a", "tid": 7, "ts": 0, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "rotary_kernel", "tid": 7, "ts": 150, "dur": 50},
        {"ph": "X", "cat": "kernel", "name": "dpsk::ep::internode::dispatch<x>", "tid": 9, "ts": 20, "dur": 300},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "tid": 1, "ts": 0, "dur": 1000},  # host: not a kernel
    ]
    summary = summarise(events, "test")
    assert summary["span_ms"] == pytest.approx(0.32)  # 0 .. 320 us
    assert summary["streams"]["7"] == {"busy_ms": 0.15, "kernels": 2, "span_ms": 0.2, "role": "compute"}
    assert summary["streams"]["9"]["role"] == "communication"
    roles = by_role(summary)
    assert roles["compute"]["gemm"] == pytest.approx(0.1) and roles["compute"]["rope"] == pytest.approx(0.05)
    assert roles["communication"]["communication"] == pytest.approx(0.3)


def test_the_committed_trace_summary_is_deepseeks_pair() -> None:
    """Issue 25's first reading of train.json: the compute stream busy ~118 ms, GEMMs ~64 ms of it, attention ~22 ms,
    a second compute stream ~11 ms of GEMMs, the communication stream ~113 ms, the span ~129 ms."""
    measured = measured_pair()
    streams = measured["streams"]
    compute = sorted((entry["busy_ms"] for entry in streams.values() if entry["role"] == "compute"), reverse=True)
    assert compute == [pytest.approx(118.2, abs=0.1), pytest.approx(11.4, abs=0.1)]
    assert measured["span_ms"] == pytest.approx(129.0, abs=0.1)
    roles = by_role(measured)
    assert roles["compute"]["gemm"] == pytest.approx(75.1, abs=0.1)  # 63.7 main stream + 11.4 second
    assert roles["compute"]["attention"] == pytest.approx(22.0, abs=0.1)
    assert roles["communication"]["communication"] == pytest.approx(113.4, abs=0.1)
    # every kernel counted once: the classes add to the streams' busy time
    for stream, entry in streams.items():
        assert sum(measured["classes"][stream].values()) == pytest.approx(entry["busy_ms"], abs=1e-3)


def test_moesims_pair_adds_up_and_the_table_is_current() -> None:
    prediction = predicted_pair()  # raises if the classes do not add up to the phases' time
    assert prediction.span_s >= max(prediction.compute_s, prediction.communication_s)
    assert prediction.stretch == pytest.approx(132 / 112)  # DeepEP's 20 of the H800's 132 SMs
    assert TABLE.read_text() == table(prediction, measured_pair()), "run: python -m moesim.validation.train_pair"
