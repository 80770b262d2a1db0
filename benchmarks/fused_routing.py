"""The fused Sinkhorn kernel's grid against a bare torch.topk, side by side in one run on a GPU.

    python benchmarks/fused_routing.py

For Mixtral-, DeepSeek-V3- and Qwen3-shaped router scores (4,096 tokens, Zipf-skewed
popularity 0.5): the device time of one call of the Sinkhorn plan as moesim chooses its
grid, with forced grids of 1 to 132 programs meeting at the barrier, and PyTorch's 50
rounds, each against torch.topk on the same scores. Device time: the GPU is kept busy
(a spin kernel) while the host queues 20 calls, so launches do not count. Without a GPU
it prints PyTorch's rounds on the CPU.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesim.routing import fused  # noqa: E402
from moesim.routing.sinkhorn import sinkhorn_plan  # noqa: E402
from moesim.validation.timing import seconds_in_stream  # noqa: E402

SHAPES = (("mixtral-8x7b", 8, 2), ("deepseek-v3", 256, 8), ("qwen3-30b-a3b", 128, 8))
TOKENS, CALLS, REPEATS = 4096, 20, 7


def device_seconds(work: Callable[[], Any], device: torch.device) -> float:
    """Median device time of one call (CUDA events around queued calls), or wall time on the CPU."""
    work()
    return statistics.median(seconds_in_stream(work, device, CALLS, 20_000_000) for _ in range(REPEATS))


def pytorch_rounds(logits: torch.Tensor) -> Any:
    """PyTorch's 50 rounds (the fused kernels switched off for the call, the setting restored after)."""
    before = os.environ.get("MOESIM_FUSED_ROUTING")
    os.environ["MOESIM_FUSED_ROUTING"] = "0"
    try:
        return sinkhorn_plan(logits)
    finally:
        if before is None:
            os.environ.pop("MOESIM_FUSED_ROUTING")
        else:
            os.environ["MOESIM_FUSED_ROUTING"] = before


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"Sinkhorn plan against torch.topk on {name}, {TOKENS:,} tokens (device ms per call; x torch.topk)")
    for layer, experts, top_k in SHAPES:
        generator = torch.Generator().manual_seed(experts)
        skew = -0.5 * torch.log(torch.arange(1, experts + 1, dtype=torch.float32))
        logits = (torch.randn(TOKENS, experts, generator=generator) + skew).to(device)
        tasks: dict[str, Callable[[], Any]] = {"torch.topk": lambda: torch.topk(logits, top_k, dim=-1)}
        if fused.available(logits):
            tasks["fused, moesim's grid"] = lambda: sinkhorn_plan(logits)
            for programs in (1, 4, 16, 64, 132):
                tasks[f"fused, {programs} programs + barrier"] = lambda p=programs: fused.sinkhorn_plan_fused(
                    logits, 50, 1e-4, 1e-8, programs=p
                )
        tasks["PyTorch rounds"] = lambda: pytorch_rounds(logits)
        times = {task: device_seconds(work, device) for task, work in tasks.items()}
        _, used = sinkhorn_plan(logits)
        print(f"\n{layer}: {experts} experts, top-{top_k}, {int(used)} rounds to Megatron-Core's tolerance")
        for task, seconds in times.items():
            print(f"  {task:34s} {seconds * 1e3:8.3f} ms  x {seconds / times['torch.topk']:6.2f}")


if __name__ == "__main__":
    main()
