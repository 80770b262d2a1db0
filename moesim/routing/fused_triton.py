"""The Triton kernels behind `moesim.routing.fused` (imported only where Triton is; see that module)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(logits_ptr, block, num_tokens, num_experts, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """exp(logits - row max) of one block of tokens; zeros outside the scores."""
    rows = block * BLOCK_T + tl.arange(0, BLOCK_T)
    columns = tl.arange(0, BLOCK_E)
    inside = (rows < num_tokens)[:, None] & (columns < num_experts)[None, :]
    scores = tl.load(logits_ptr + rows[:, None] * num_experts + columns[None, :], mask=inside, other=0.0)
    top = tl.max(tl.where(inside, scores, -float("inf")), axis=1)
    return tl.where(inside, tl.exp(scores - top[:, None]), 0.0)


@triton.jit
def _row_scale(tile, col_scale, num_tokens, eps):
    """d0 = 1 / (T K d1) for a tile's rows (a row outside the scores has K = 0: its share stays 0)."""
    return 1.0 / (tl.sum(tile * col_scale[None, :], axis=1) * num_tokens + eps)


@triton.jit
def sinkhorn(
    logits_ptr,
    plan_ptr,
    scratch_ptr,
    rounds_ptr,
    num_tokens,
    num_experts,
    blocks_each,
    iterations,
    tolerance,
    eps,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    RESIDENT: tl.constexpr,
):
    """Every Sinkhorn round in one launch.

    Programs add their column masses atomically and meet at a grid barrier each round.
    RESIDENT: a program's one block stays in registers across rounds instead of being
    reloaded.
    """
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    columns = tl.arange(0, BLOCK_E)
    in_columns = columns < num_experts
    col_scale = tl.where(in_columns, 1.0, 0.0)
    arrivals_ptr = scratch_ptr + iterations * BLOCK_E
    if RESIDENT:
        held = _tile(logits_ptr, program, num_tokens, num_experts, BLOCK_T, BLOCK_E)
    rounds = tl.full([], 0, tl.int32)
    settled = tl.full([], 0, tl.int32)
    while (rounds < iterations) & (settled == 0):
        if RESIDENT:
            mass = tl.sum(held * _row_scale(held, col_scale, num_tokens, eps)[:, None], axis=0)
        else:
            mass = tl.zeros([BLOCK_E], dtype=tl.float32)
            for step in range(0, blocks_each):  # blocks program, program + programs, ... (past the end: zeros)
                tile = _tile(logits_ptr, program + step * programs, num_tokens, num_experts, BLOCK_T, BLOCK_E)
                mass += tl.sum(tile * _row_scale(tile, col_scale, num_tokens, eps)[:, None], axis=0)
        tl.atomic_add(scratch_ptr + rounds * BLOCK_E + columns, mass, mask=in_columns, sem="relaxed")
        tl.atomic_add(arrivals_ptr, 1.0, sem="release")  # arrive: this program's masses are in
        everyone = (programs * (rounds + 1)).to(tl.float32)
        while tl.atomic_add(arrivals_ptr, 0.0, sem="acquire") < everyone:  # wait for every program
            pass
        mass = tl.load(scratch_ptr + rounds * BLOCK_E + columns, mask=in_columns, other=0.0, volatile=True)
        new_scale = tl.where(in_columns, 1.0 / (mass * num_experts + eps), 0.0)
        change = tl.sum(tl.abs(new_scale - col_scale), axis=0) / num_experts
        col_scale = new_scale
        rounds += 1
        settled = (change < tolerance).to(tl.int32)
    for step in range(0, blocks_each):
        block = program + step * programs
        if RESIDENT:
            tile = held
        else:
            tile = _tile(logits_ptr, block, num_tokens, num_experts, BLOCK_T, BLOCK_E)
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)
        inside = (rows < num_tokens)[:, None] & in_columns[None, :]
        plan = tile * col_scale[None, :] * _row_scale(tile, col_scale, num_tokens, eps)[:, None]
        tl.store(plan_ptr + rows[:, None] * num_experts + columns[None, :], plan, mask=inside)
    if program == 0:
        tl.store(rounds_ptr, rounds)


@triton.jit
def queue_drops(ids_ptr, kept_ptr, dropped_ptr, num_tokens, slots, capacity, num_experts, BLOCK: tl.constexpr):
    """Program e counts expert e's slots in slot-major order; the last program clears the empty slots."""
    expert = tl.program_id(0)
    target = tl.where(expert < num_experts, expert, -1)  # the last program owns the empty slots (-1)
    total = num_tokens * slots
    seen = tl.full([], 0, tl.int32)
    for start in range(0, total, BLOCK):
        order = start + tl.arange(0, BLOCK)  # slot-major: every first choice, then every second, ...
        inside = order < total
        slot = order // num_tokens
        where = (order - slot * num_tokens) * slots + slot
        ids = tl.load(ids_ptr + where, mask=inside, other=-2)
        mine = ids == target
        hits = mine.to(tl.int32)
        place = tl.cumsum(hits, axis=0) + seen
        seen += tl.sum(hits, axis=0)
        drop = (place > capacity) & (target >= 0)
        tl.store(kept_ptr + where, tl.where(drop, -1, ids), mask=mine)
        tl.store(dropped_ptr + where, drop.to(tl.int8), mask=mine)
