"""Fused GPU kernels (Triton) for the two routing steps that PyTorch runs as many small kernels.

* Sinkhorn balancing: every round needs a reduction over all tokens (the column masses),
  so in PyTorch a round is two matrix-vector products plus element-wise work, ~4 kernels
  of 2-3 us each, 200 for 50 rounds: 14-35x a plain top-k on an H100. Here one
  persistent kernel runs every round: each program holds a slice of the tokens, adds its
  share of the column masses atomically, and all programs meet at a grid barrier (an
  atomic counter) before reading the new column scaling. Because every program then
  holds the same column scaling, each can test Megatron-Core's stopping rule (the mean
  change of the column scaling below `tolerance`) and all stop at the same round, on the
  device: no host synchronisation, and 3-5 rounds instead of 50 on realistic scores.
* The position drop policy: each slot's place in its expert's queue (slot-major order)
  is a running count of that expert's hits. One program per expert scans the slots and
  writes the kept ids and the drop mask directly, instead of a scatter, a scan, a gather
  and two masks.

The grid barrier needs every program resident at once, so the Sinkhorn grid is never
larger than the GPU's multiprocessor count. The column masses are summed with float
atomics, whose order varies: the last bits of the plan may differ from run to run (as
with PyTorch's own atomic reductions on a GPU).

Used on CUDA tensors when Triton is importable; `MOESIM_FUSED_ROUTING=0` turns them off.
Under Triton's interpreter (`TRITON_INTERPRET=1`, CPU tensors, one program at a time)
the same kernels run on the CPU, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Optional

import torch

SINKHORN_BLOCK = 8192
"""Scores a Sinkhorn program holds per block (tokens x padded experts)."""

QUEUE_BLOCK = 4096
"""Slots a queue program scans per step."""

QUEUE_TABLE = 2**24
"""Slots x (experts + 1) up to which the queue scan is used: each program reads every slot once."""


@functools.lru_cache(maxsize=None)
def _kernels() -> Optional[Any]:
    """The compiled kernels' module, or None when Triton is missing (imported on first use: it is heavy)."""
    try:
        from moesim.routing import fused_triton  # optional and heavy: Triton, only on the fused path
    except ImportError:
        return None
    return fused_triton


_FAILED: list[str] = []
"""Why the kernels failed to build or launch here, if they did (then PyTorch's kernels serve)."""


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (the tests' way to run these kernels without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(tensor: torch.Tensor) -> bool:
    """Whether the fused kernels serve this tensor: on CUDA (or CPU under the interpreter), with Triton present."""
    if os.environ.get("MOESIM_FUSED_ROUTING", "1") == "0":
        return False
    on_device = tensor.device.type == "cuda" or (tensor.device.type == "cpu" and interpreting())
    return on_device and not _FAILED and _kernels() is not None


def _launch(name: str, grid: tuple[int], *args: Any, **options: Any) -> bool:
    """Run one kernel; on a failure to build or launch, say so once and turn the kernels off."""
    try:
        getattr(_kernels(), name)[grid](*args, **options)
    except Exception as error:  # noqa: BLE001 - a broken Triton set-up must not stop the routing
        _FAILED.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        warnings.warn(f"moesim: fused routing kernels off ({_FAILED[0]}); PyTorch's kernels serve", stacklevel=3)
        return False
    return True


def _programs_at_once(device: torch.device) -> int:
    """How many programs may wait at a grid barrier: one per multiprocessor (one, under the interpreter)."""
    if device.type != "cuda":
        return 1
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    """A GPU's multiprocessor count, asked once (the router runs every layer of every step)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def sinkhorn_plan_fused(
    logits: torch.Tensor, iterations: int, tolerance: float, eps: float, programs: Optional[int] = None
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The Sinkhorn plan (float32 [tokens, experts]) and the rounds run (a 0-dim device tensor).

    One program per block of scores, up to the multiprocessor count (on an H100 the
    barrier costs less than one program's work on the Mixtral shape: 4 programs 0.021 ms,
    1 program 0.08 ms; `benchmarks/fused_routing.py`). `programs` forces a grid
    (measurements, tests).
    None where the kernel does not apply (too many experts for one block); the caller
    then runs the PyTorch rounds.
    """
    num_tokens, num_experts = logits.shape
    block_experts = max(2, 1 << (num_experts - 1).bit_length())
    if block_experts > SINKHORN_BLOCK:
        return None
    block_tokens = max(1, min(SINKHORN_BLOCK // block_experts, 1 << max(0, (num_tokens - 1).bit_length())))
    blocks = -(-num_tokens // block_tokens)
    programs = max(1, min(programs or blocks, blocks, _programs_at_once(logits.device)))
    blocks_each = -(-blocks // programs)
    logits = logits.float().contiguous()
    plan = torch.empty_like(logits)
    # column masses per round, then the barrier's arrival counter (a float: exact up to 2^24 arrivals)
    scratch = torch.zeros(iterations * block_experts + 1, dtype=torch.float32, device=logits.device)
    rounds = torch.empty((), dtype=torch.int32, device=logits.device)
    launched = _launch(
        "sinkhorn",
        (programs,),
        logits,
        plan,
        scratch,
        rounds,
        num_tokens,
        num_experts,
        blocks_each,
        iterations,
        tolerance,
        eps,
        BLOCK_T=block_tokens,
        BLOCK_E=block_experts,
        RESIDENT=blocks_each == 1,
        num_warps=8 if block_tokens * block_experts >= 4096 else 4,
    )
    return (plan, rounds) if launched else None


def queue_drops_fused(
    expert_ids: torch.Tensor, num_experts: int, capacity: int
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Kept ids (-1 where dropped or empty) and the drop mask under the position policy.

    None where the table is too large for the scan (the caller sorts instead).
    """
    num_tokens, slots = expert_ids.shape
    if num_tokens * slots * (num_experts + 1) > QUEUE_TABLE or num_tokens * slots >= 2**31:
        return None
    expert_ids = expert_ids.contiguous()
    kept = torch.empty_like(expert_ids)
    dropped = torch.empty(expert_ids.shape, dtype=torch.bool, device=expert_ids.device)
    launched = _launch(
        "queue_drops",
        (num_experts + 1,),
        expert_ids,
        kept,
        dropped.view(torch.int8),
        num_tokens,
        slots,
        capacity,
        num_experts,
        BLOCK=QUEUE_BLOCK,
        num_warps=8,
    )
    return (kept, dropped) if launched else None
