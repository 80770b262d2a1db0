"""How much slower FlashAttention's backward runs than its forward, per FLOP, by sequence length (measured).

The backward does 2.5 times the forward's FLOPs (`moesim.sim.phase.BACKWARD_ATTENTION_FACTOR`: it recomputes the
scores and runs five matmuls to the forward's two) and does them at a lower rate: on an H100 SXM5, head dimension
128, FlashAttention-2 runs its forward at 309, 350, 362, 368, 370 and 370 TFLOP/s and its backward at 214, 260,
291, 310, 318 and 322 from 512 to 16,384 tokens (FlashAttention-3, Shah et al. 2024, arXiv 2407.08608, its
benchmark figures; FlashAttention-3's own and cuDNN's kernels keep nearly the same ratios, 0.68-0.87 and
0.61-0.87). moesim's forward rate is fitted to PyTorch's SDPA (FlashAttention-2) on each GPU; its backward runs
at that rate times the measured ratio, interpolated in log tokens and held at the ends.
"""

from __future__ import annotations

import numpy as np

TOKENS = (512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)
FORWARD_TFLOPS = (309.0, 350.0, 362.0, 368.0, 370.0, 370.0)
BACKWARD_TFLOPS = (214.0, 260.0, 291.0, 310.0, 318.0, 322.0)
SOURCE = "FlashAttention-2 on an H100 SXM5, head dim 128 (FlashAttention-3 paper, arXiv 2407.08608)"


def backward_slowdown(tokens: float) -> float:
    """The forward's rate over the backward's at a sequence of `tokens` (>= 1)."""
    ratio = np.interp(np.log(max(tokens, 1.0)), np.log(TOKENS), np.divide(BACKWARD_TFLOPS, FORWARD_TFLOPS))
    return float(1.0 / ratio)
