"""The torch MoE executor: expert-parallel output = single process = slow reference; gradients flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from moesim import scenario_from_dict
from moesim.cli import app
from moesim.executor.dispatch import ExpertParallel
from moesim.executor.launch import execute, spawn
from moesim.executor.layer import MoELayer, reference_moe
from moesim.routing import make_router
from moesim.workload import load_trace

REPO = Path(__file__).resolve().parent.parent
HIDDEN, FFN, EXPERTS = 16, 24, 8


def make_layer(
    rule: str,
    parallel: ExpertParallel | None = None,
    shared: int = 1,
    kernel: str = "auto",
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> MoELayer:
    router = make_router(rule, num_experts=EXPERTS, top_k=2 if rule != "hash" else 1, **options)
    return MoELayer(
        HIDDEN,
        FFN,
        EXPERTS,
        router,
        num_shared_experts=shared,
        parallel=parallel,
        seed=3,
        experts_kernel=kernel,
        dtype=dtype,
    )


@pytest.mark.parametrize(
    "rule, options",
    [
        ("top_k", {}),
        ("top_k", {"capacity_factor": 0.5}),
        ("expert_choice", {"capacity_factor": 1.0}),
        ("bias_balanced", {}),
        ("hash", {}),
    ],
)
def test_single_process_equals_slow_reference(rule: str, options: dict[str, Any]) -> None:
    layer = make_layer(rule, **options)
    x = torch.randn(40, HIDDEN, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(40)
    out = layer(x, ids)
    assert torch.allclose(out, reference_moe(layer, x, layer.last_assignment), atol=1e-5)


@pytest.mark.parametrize(
    "rule, options",
    [
        ("top_k", {}),
        ("top_k", {"capacity_factor": 0.5}),
        ("expert_choice", {"capacity_factor": 1.0}),
        ("gshard_top2", {}),
    ],
)
def test_grouped_gemm_experts_equal_the_loop_forward_and_backward(rule: str, options: dict[str, Any]) -> None:
    """`torch._grouped_mm` (the GPU kernel; it runs on the CPU too) computes what the per-expert loop does.

    With drops or empty slots the permutation carries rows without a token: their grouped-GEMM
    output is unspecified, so the layer masks them, and no gradient may leak from them.
    """
    grouped, loop = make_layer(rule, kernel="grouped", **options), make_layer(rule, kernel="loop", **options)
    x = torch.randn(40, HIDDEN, generator=torch.Generator().manual_seed(2))
    x_grouped, x_loop = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_grouped, out_loop = grouped(x_grouped), loop(x_loop)
    assert torch.allclose(out_grouped, out_loop, atol=1e-5)
    out_grouped.pow(2).sum().backward()
    out_loop.pow(2).sum().backward()
    assert torch.isfinite(x_grouped.grad).all()
    assert torch.allclose(x_grouped.grad, x_loop.grad, atol=1e-4)
    for name in ("router_weight", "expert_up", "expert_down", "shared_up"):
        assert torch.allclose(getattr(grouped, name).grad, getattr(loop, name).grad, atol=1e-4), name


def test_bf16_layer_follows_the_fp32_layer() -> None:
    """The default GPU precision: same weights drawn, rounded to bf16; the output within bf16 rounding."""
    full, half = make_layer("top_k", kernel="grouped"), make_layer("top_k", kernel="grouped", dtype=torch.bfloat16)
    assert half.expert_up.dtype == torch.bfloat16 and torch.equal(half.expert_up, full.expert_up.to(torch.bfloat16))
    x = torch.randn(64, HIDDEN, generator=torch.Generator().manual_seed(4))
    reference = full(x)
    out = half(x.to(torch.bfloat16))
    same_choice = torch.equal(half.last_assignment.routing_map(), full.last_assignment.routing_map())
    error = (out.float() - reference).norm() / reference.norm()
    assert same_choice and error < 2e-2


def test_permutation_rows_are_known_on_the_host() -> None:
    """The permutation's size never depends on the routing: tokens x slots, or experts x capacity when smaller."""
    layer = make_layer("top_k", capacity_factor=0.5, kernel="grouped")
    x = torch.randn(40, HIDDEN, generator=torch.Generator().manual_seed(5))
    assignment = layer.route(x)
    rows, may_be_empty = layer.rows_for(assignment)
    assert (rows, may_be_empty) == (EXPERTS * assignment.capacity, True)
    permutation = layer.permute(x, assignment)
    assert permutation.tokens.shape[0] == rows
    served = int(assignment.expert_load.sum())
    assert permutation.padded and int((permutation.token_of < 40).sum()) == served == int(
        permutation.expert_counts.sum()
    )
    dropless = make_layer("top_k", kernel="grouped")
    assert dropless.rows_for(dropless.route(x)) == (40 * 2, False)


def test_gelu_experts_and_dropped_tokens_pass_nothing() -> None:
    router = make_router("top_k", num_experts=4, top_k=1, capacity_factor=0.25)
    layer = MoELayer(8, 12, 4, router, activation="gelu", seed=0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    out = layer(x)
    dropped_rows = ~layer.last_assignment.served.any(dim=1)
    assert dropped_rows.any() and torch.all(out[dropped_rows] == 0)
    assert torch.allclose(out, reference_moe(layer, x, layer.last_assignment), atol=1e-5)


def test_gradients_reach_router_and_experts() -> None:
    layer = make_layer("top_k")
    x = torch.randn(32, HIDDEN, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for parameter in (layer.router_weight, layer.expert_up, layer.expert_down, layer.shared_up):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert x.grad is not None


def _ep_worker(rank: int, world: int, rule: str, use_alltoall: bool) -> dict[str, Any]:
    parallel = ExpertParallel.from_process_group()
    parallel.use_alltoall = use_alltoall and parallel.use_alltoall
    distributed = make_layer(rule, parallel)
    whole = make_layer(rule)
    x = torch.randn(24, HIDDEN, generator=torch.Generator().manual_seed(10 + rank)).requires_grad_()
    ids = torch.arange(24) + 100 * rank
    out = distributed(x, ids)
    reference = whole(x.detach(), ids)
    out.pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    whole(x_ref, ids).pow(2).sum().backward()
    return {
        "match": bool(torch.allclose(out, reference, atol=1e-5)),
        "grad_match": bool(torch.allclose(x.grad, x_ref.grad, atol=1e-5)),
        "router_grad_match": bool(torch.allclose(distributed.router_weight.grad, whole.router_weight.grad, atol=1e-5)),
        "shared_grad_match": bool(torch.allclose(distributed.shared_up.grad, whole.shared_up.grad, atol=1e-5)),
        "local_down": distributed.expert_down.grad.tolist(),
        "whole_down": whole.expert_down.grad.tolist(),
        "received": int(distributed.last_assignment.expert_load.sum()),
        "alltoall": parallel.use_alltoall,
    }


@pytest.mark.parametrize("use_alltoall", [True, False])
def test_expert_parallel_equals_single_process(use_alltoall: bool) -> None:
    """Outputs, input gradients and parameter gradients of an expert-parallel layer equal the one-process layer's.

    Each rank's expert gradients come from every rank's tokens: their sum over the two
    one-process layers (each on one rank's tokens) is what each expert's slice must hold.
    """
    results = spawn(_ep_worker, 2, "top_k", use_alltoall, backend="gloo")
    assert all(result["match"] and result["grad_match"] for result in results)
    assert all(result["router_grad_match"] and result["shared_grad_match"] for result in results)
    every_token = sum(torch.tensor(result["whole_down"]) for result in results)  # [experts, ffn, hidden]
    local = EXPERTS // 2
    for rank, result in enumerate(results):
        assert torch.allclose(
            torch.tensor(result["local_down"]), every_token[rank * local : (rank + 1) * local], atol=1e-5
        )
    assert [result["alltoall"] for result in results] == [use_alltoall] * 2


def _empty_rank_worker(rank: int, world: int) -> dict[str, Any]:
    """Every token goes to experts of rank 0: rank 1 receives nothing and still takes part."""
    parallel = ExpertParallel.from_process_group()
    router = make_router("top_k", num_experts=4, top_k=1)
    layer = MoELayer(8, 8, 4, router, parallel=parallel, seed=0)
    with torch.no_grad():
        layer.router_weight.zero_()
        layer.router_weight[0] = 1.0  # expert 0 always wins for positive first feature
    x = torch.rand(6, 8) + 0.1
    out = layer(x)
    whole = MoELayer(8, 8, 4, router, seed=0)
    with torch.no_grad():
        whole.router_weight.copy_(layer.router_weight)
    return {"match": bool(torch.allclose(out, whole(x), atol=1e-5))}


def test_a_rank_that_receives_no_tokens() -> None:
    assert all(result["match"] for result in spawn(_empty_rank_worker, 2, backend="gloo"))


def test_execute_times_every_phase_and_saves_a_trace(tmp_path: Path) -> None:
    scenario = scenario_from_dict(
        {
            "model": {"preset": "tiny-moe", "num_shared_experts": 1},
            "cluster": {"num_nodes": 1, "gpus_per_node": 2},
            "parallelism": {"ep_size": 2},
            "workload": {"micro_batch_size": 1, "seq_len": 64},
        }
    )
    trace = tmp_path / "scores.npz"
    report = execute(scenario, ranks=2, warmup=1, repeats=2, trace_path=str(trace))
    for name in (
        "router",
        "permute",
        "dispatch",
        "experts",
        "combine",
        "unpermute",
        "shared_experts",
        "backward",
        "layer",
    ):
        assert len(report["phases_s"][name]) == 2 and all(value > 0 for value in report["phases_s"][name])
    assert report["backend"] == "gloo" and report["alltoall_single"] is True
    assert sum(report["served_slots"]) == 2 * 64 * 2  # every token to top-2 experts, dropless
    layers = load_trace(trace)
    assert layers[0].logits.shape == (128, 8) and layers[0].source_rank.tolist() == [0] * 64 + [1] * 64


def test_execute_command(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "model: tiny-moe\ncluster: {num_nodes: 1, gpus_per_node: 2}\nparallelism: {ep_size: 2}\n"
        "workload: {mode: inference, micro_batch_size: 1, seq_len: 32}\n"
    )
    out = tmp_path / "timings.json"
    result = CliRunner().invoke(app, ["execute", str(scenario), "--ranks", "2", "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["ranks"] == 2 and "dispatch" in data["phases_s"] and "backward" not in data["phases_s"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "rule, options",
    [
        ("top_k", {}),
        ("top_k", {"capacity_factor": 0.75}),
        ("expert_choice", {"capacity_factor": 1.0}),
        ("bias_balanced", {"num_expert_groups": 4, "topk_groups": 2}),
    ],
)
def test_cuda_layer_runs_without_host_synchronisation_and_matches_the_loop(rule: str, options: dict[str, Any]) -> None:
    """On a GPU: bf16, grouped-GEMM experts, forward and backward without the host waiting once; same result as the
    loop."""
    router = make_router(rule, num_experts=EXPERTS, top_k=2, **options)
    grouped = MoELayer(64, 96, EXPERTS, router, num_shared_experts=1, seed=5, dtype=torch.bfloat16, device="cuda")
    loop = MoELayer(
        64,
        96,
        EXPERTS,
        router,
        num_shared_experts=1,
        seed=5,
        dtype=torch.bfloat16,
        device="cuda",
        experts_kernel="loop",
    )
    assert grouped.experts_kernel == "grouped" and grouped.expert_up.is_cuda
    x = torch.randn(256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grouped(x).sum().backward()  # warm-up: a bias moves to the GPU once, kernels load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = grouped(x)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    timings = grouped.clock.read()
    assert timings["experts"] > 0 and timings["span"] >= timings["experts"]
    reference = loop(x.detach())
    assert (out.float() - reference.float()).norm() / reference.float().norm() < 2e-2
