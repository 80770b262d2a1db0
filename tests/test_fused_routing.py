"""The fused routing kernels (Triton) give PyTorch's answers.

Without a GPU they run under Triton's interpreter on the CPU, in a child process (the
interpreter is chosen when the kernels are defined): Sinkhorn with one program (its grid
barrier needs programs that run at once), the queue with one program per expert. On a
GPU they run compiled, Sinkhorn with many programs meeting at the barrier, at the sizes
of real MoE layers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moesim.routing import fused, make_router
from moesim.routing.capacity import position_in_queue_sorted
from moesim.routing.sinkhorn import sinkhorn_plan

HAS_TRITON = importlib.util.find_spec("triton") is not None


def interpreter_works() -> bool:
    """Triton 3.6's interpreter cannot run a loop over a kernel argument with numpy 2 (fixed in 3.7)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("triton").split(".")[:2])
    return (major, minor) >= (3, 7)


CHECKS = """
import os, torch
from moesim.routing import fused, make_router
from moesim.routing.capacity import position_in_queue_sorted
from moesim.routing.sinkhorn import sinkhorn_plan

def torch_only(call):
    os.environ["MOESIM_FUSED_ROUTING"] = "0"
    try:
        return call()
    finally:
        os.environ["MOESIM_FUSED_ROUTING"] = "1"

generator = torch.Generator().manual_seed(7)
# one program alone with its block held (300 x 8) or reloaded (5000 x 8); the barrier path with one
# program, its block held (forced) or reloaded (3000 x 40)
for tokens, experts, k in [(300, 8, 2), (257, 16, 4), (33, 3, 1), (1, 5, 2), (5000, 8, 2), (3000, 40, 4)]:
    logits = torch.randn(tokens, experts, generator=generator) * 1.5 + torch.linspace(0, 2, experts)
    (plan, rounds), (reference, used) = sinkhorn_plan(logits), torch_only(lambda: sinkhorn_plan(logits))
    # PyTorch's CPU kernels themselves differ from process to process by up to ~2e-4 of an entry (their vector
    # paths vary with memory alignment): a round more or less, and a tolerance above that noise
    assert isinstance(rounds, torch.Tensor) and abs(int(rounds) - used) <= 1, (tokens, experts, int(rounds), used)
    assert torch.allclose(plan, reference, rtol=2e-3, atol=1e-9), (tokens, experts)
    with_barrier, barrier_rounds = fused.sinkhorn_plan_fused(logits, 50, 1e-4, 1e-8, programs=1)
    assert torch.equal(barrier_rounds, rounds) and torch.allclose(with_barrier, plan, rtol=1e-6, atol=1e-12)
    router = make_router("sinkhorn", experts, k)
    fused_route, plain_route = router.route(logits), torch_only(lambda: router.route(logits))
    # the same choice wherever the plan decides it by more than float noise (the two sum in other orders)
    ranked = reference.sort(dim=1, descending=True).values
    margin = (ranked[:, k - 1] - ranked[:, k]) / ranked[:, k - 1] if k < experts else torch.ones(tokens)
    decided = margin > 2e-3
    assert decided.float().mean() > 0.8 or tokens == 1  # one token: balance makes every entry 1 / experts, all tied
    assert torch.equal(fused_route.expert_ids[decided], plain_route.expert_ids[decided]), (tokens, experts)
    assert torch.allclose(fused_route.weights[decided], plain_route.weights[decided]), (tokens, experts)
    for capacity_factor in (0.5, 1.0, 1.25):
        capped = make_router("top_k", experts, k, capacity_factor=capacity_factor)
        fused_route, plain_route = capped.route(logits), torch_only(lambda: capped.route(logits))
        assert fused_route.equals(plain_route), (tokens, experts, capacity_factor)
generator = torch.Generator().manual_seed(7)
for tokens, slots, experts, capacity in [(50, 2, 6, 12), (300, 3, 8, 60), (7, 1, 1, 3), (5000, 2, 4, 1500)]:
    ids = torch.randint(0, experts, (tokens, slots), generator=generator)
    ids = ids.masked_fill(torch.rand(tokens, slots, generator=generator) < 0.2, -1)
    from moesim.routing.fused import queue_drops_fused
    kept, dropped = queue_drops_fused(ids, experts, capacity)
    over = (position_in_queue_sorted(ids, experts) > capacity) & (ids >= 0)
    assert torch.equal(dropped, over) and torch.equal(kept, ids.masked_fill(over, -1)), (tokens, slots, experts)
    assert 0 < int(over.sum()) < int((ids >= 0).sum())
print("fused kernels agree")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (the test extra installs it on Linux x86-64)")
def test_fused_kernels_under_the_interpreter_give_pytorchs_answers() -> None:
    if not interpreter_works():
        pytest.skip("this Triton's interpreter predates 3.7 (a CUDA build's pin): the CUDA test checks the kernels")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "MOESIM_FUSED_ROUTING": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fused kernels agree" in done.stdout


def test_fused_kernels_serve_only_gpu_tensors() -> None:
    """On CPU and meta tensors PyTorch's kernels serve (the interpreter aside); a switch turns them off everywhere."""
    assert not fused.available(torch.zeros(2, device="meta"))
    if not fused.interpreting():
        assert not fused.available(torch.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tokens, experts, top_k", [(4096, 8, 2), (4096, 256, 8), (8192, 128, 8), (1000, 64, 6)])
def test_fused_kernels_on_cuda_agree_with_the_cpu(tokens: int, experts: int, top_k: int) -> None:
    assert HAS_TRITON and fused.available(torch.zeros(1, device="cuda")), f"fused kernels unavailable: {fused._FAILED}"
    generator = torch.Generator().manual_seed(tokens + experts)
    skew = -0.5 * torch.log(torch.arange(1, experts + 1, dtype=torch.float32))
    logits = torch.randn(tokens, experts, generator=generator) + skew
    plan, rounds = sinkhorn_plan(logits.cuda())
    reference, used = sinkhorn_plan(logits)
    assert not fused._FAILED, fused._FAILED
    assert abs(int(rounds) - used) <= 1, (int(rounds), used)  # float atomics: a tie at the tolerance may move a round
    assert torch.allclose(plan.cpu(), reference, rtol=1e-3, atol=1e-9)
    assert torch.allclose(plan.sum(dim=0).cpu(), torch.full((experts,), 1 / experts), rtol=1e-3)
    chosen = torch.topk(plan, top_k, dim=-1).indices.sort(dim=-1).values.cpu()
    expected = torch.topk(reference, top_k, dim=-1).indices.sort(dim=-1).values
    assert (chosen == expected).all(dim=-1).float().mean() > 0.999
    capped = make_router("top_k", experts, top_k, capacity_factor=1.0)
    on_gpu, on_cpu = capped.route(logits.cuda()), capped.route(logits)
    assert not fused._FAILED, fused._FAILED
    assert torch.equal(on_gpu.expert_ids.cpu(), on_cpu.expert_ids) and torch.equal(on_gpu.dropped.cpu(), on_cpu.dropped)
    ids = on_cpu.expert_ids.masked_fill(torch.rand(tokens, top_k, generator=generator) < 0.1, -1).cuda()
    kept, dropped = fused.queue_drops_fused(ids, experts, 7)
    over = (position_in_queue_sorted(ids.cpu(), experts) > 7) & (ids.cpu() >= 0)
    assert torch.equal(dropped.cpu(), over) and torch.equal(kept.cpu(), ids.cpu().masked_fill(over, -1))
