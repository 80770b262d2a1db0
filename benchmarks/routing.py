"""Routing speed, measured side by side in one run (not part of the test suite).

    .venv/bin/python benchmarks/routing.py            # full sizes (about a minute)
    .venv/bin/python benchmarks/routing.py --quick    # smaller sizes, seconds

Prints, for 65,536 tokens x 256 experts with k = 8:
* each top-k-family rule's time and its ratio to a bare `torch.topk` on the same scores
  (the floor; target: at most 3x), with and without capacity;
* BASE exact against scipy's linear_sum_assignment on the capacity-expanded matrix at
  8,192 tokens x 64 experts (target: faster), and BASE exact at 65,536 x 256 (target: completes).
Times are the median of several repetitions, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from moesim.routing import make_router


def median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def topk_family(tokens: int, experts: int, k: int, repeats: int) -> None:
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(0))
    token_ids = torch.randint(0, 32000, (tokens,))
    floor = median_ms(lambda: torch.topk(logits, k, dim=-1), repeats)
    print(f"\nTop-k family on {tokens:,} tokens x {experts} experts, k = {k} (median of {repeats})")
    print(f"{'rule':44s} {'time (ms)':>10s} {'x torch.topk':>13s}")
    print(f"{'torch.topk (floor)':44s} {floor:10.1f} {1.0:13.2f}")
    cases = [
        ("top_k (softmax, then top-k)", "top_k", {}),
        ("top_k (top-k, then softmax)", "top_k", {"softmax_order": "after_topk"}),
        ("noisy_top_k", "noisy_top_k", {}),
        ("bias_balanced (8 groups, top-4)", "bias_balanced", {"num_expert_groups": 8, "topk_groups": 4}),
        ("group_limited (8 groups, top-4)", "group_limited", {"num_expert_groups": 8, "topk_groups": 4}),
    ]
    for capacity_factor in (None, 1.25):
        for label, rule, options in cases:
            router = make_router(rule, num_experts=experts, top_k=k, capacity_factor=capacity_factor, **options)
            elapsed = median_ms(lambda: router.route(logits, token_ids), repeats)
            suffix = "dropless" if capacity_factor is None else f"cf {capacity_factor}"
            print(f"{label + ', ' + suffix:44s} {elapsed:10.1f} {elapsed / floor:13.2f}")


def base_against_scipy(tokens: int, experts: int, repeats: int) -> None:
    from scipy.optimize import linear_sum_assignment

    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(1))
    router = make_router("base", num_experts=experts, top_k=1)
    ours = median_ms(lambda: router.route(logits), repeats)
    capacity = -(-tokens // experts)
    expanded = np.repeat(logits.double().numpy(), capacity, axis=1)
    scipy_ms = median_ms(lambda: linear_sum_assignment(expanded, maximize=True), max(1, repeats // 2))
    assignment = router.route(logits)
    served = assignment.served
    rows = torch.arange(tokens).unsqueeze(1).expand_as(assignment.expert_ids)
    ours_total = float(logits[rows[served], assignment.expert_ids[served]].double().sum())
    r, c = linear_sum_assignment(expanded, maximize=True)
    print(f"\nBASE exact vs scipy linear_sum_assignment, {tokens:,} tokens x {experts} experts (capacity {capacity})")
    print(f"  moesim BASE (OR-Tools min-cost flow): {ours:9.1f} ms, total affinity {ours_total:.4f}")
    print(
        f"  scipy on the {tokens}x{tokens} expanded matrix: {scipy_ms:9.1f} ms, total affinity "
        f"{expanded[r, c].sum():.4f}"
    )
    print(f"  speed-up: {scipy_ms / ours:.1f}x")


def base_large(tokens: int, experts: int, k: int) -> None:
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(2))
    for top_k, candidates in ((1, None), (k, None), (k, 2 * k)):
        router = make_router("base", num_experts=experts, top_k=top_k, candidates=candidates)
        started = time.perf_counter()
        assignment = router.route(logits)
        elapsed = time.perf_counter() - started
        label = "exact" if candidates is None else f"top-{candidates} candidates"
        print(
            f"BASE {label}, {tokens:,} x {experts}, k = {top_k}: {elapsed:.2f} s, "
            f"max load {int(assignment.expert_load.max())} / capacity {assignment.capacity}, dropped "
            f"{assignment.num_dropped}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.quick:
        topk_family(8192, 256, 8, 5)
        base_against_scipy(2048, 32, 3)
        base_large(8192, 64, 2)
    else:
        topk_family(65536, 256, 8, 7)
        base_against_scipy(8192, 64, 3)
        base_large(65536, 256, 8)


if __name__ == "__main__":
    main()
