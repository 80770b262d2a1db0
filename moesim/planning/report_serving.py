"""The serving part of a report (`moesim report` on an inference scenario): the request stream's latency
distributions, the throughput-latency curve over concurrency and where an iteration's time goes, as `moesim serve`
computes them."""

from __future__ import annotations

from typing import Optional

import numpy as np

from moesim.errors import MoesimError
from moesim.planning.plots import iteration_plot, latency_cdf_plot, serving_curve_plot
from moesim.scenario import Scenario
from moesim.serving import concurrency_curve, prefill_pool_scenario, simulate_serving
from moesim.serving.engine import draw_lengths
from moesim.serving.iteration import IterationCost


def serving_plots(scenario: Scenario, notes: list[str], served_words: Optional[list[str]] = None) -> dict[str, bytes]:
    """Latency distributions of the `serving` requests, the throughput-latency curve over concurrency (what
    `moesim serve` reports) and where an iteration's time goes, or none with the reason in `notes`; the served
    stream's TTFT and TPOT in a few words appended to `served_words`."""
    ranks = scenario.cluster.world_size // (scenario.parallelism.tp_size * scenario.parallelism.cp_size)
    spec = scenario.serving
    try:
        cost = IterationCost(scenario)  # the iteration times (the decode pool's when disaggregated), built once
        prefill_cost = IterationCost(prefill_pool_scenario(scenario)) if spec.prefill_pool else None
        served = simulate_serving(scenario, cost, prefill_cost)
        curve = concurrency_curve(scenario, [ranks * level for level in (1, 4, 16, 64)], cost, prefill_cost)
    except MoesimError as error:
        notes.append(f"serving plots left out: {error}")
        return {}
    load = "" if served.load is None else f", load {served.load:.0%} of the busier pool's capacity"
    latencies = (
        f"TTFT p50 {served.ttft_s[50]:.3g} s (p99 {served.ttft_s[99]:.3g} s), "
        f"TPOT p50 {served.tpot_s[50] * 1e3:.3g} ms (p99 {served.tpot_s[99] * 1e3:.3g} ms), "
        f"{served.output_tokens_per_s_per_gpu:,.0f} output tokens/s per GPU"
    )
    if served_words is not None:
        served_words.append(latencies)
    notes.append(
        f"serving: {scenario.serving.num_requests} requests, {scenario.serving.arrival} arrivals (moesim serve); "
        f"{latencies}{load}"
    )
    points = [(level, result.tpot_s[50], result.output_tokens_per_s_per_gpu) for level, result in curve]
    context = float(np.mean(draw_lengths(spec.input_tokens, 64, np.random.default_rng(0))))
    width = 1 + spec.speculative_tokens
    # a disaggregated scenario prefills on its prefill pool; before two-batch overlap hides what it hides
    prefill_cost = prefill_cost or cost
    pool = " (prefill pool)" if spec.prefill_pool else ""
    overlap = ", before two-batch overlap" if spec.two_batch_overlap else ""
    iterations = [
        (
            f"prefill{pool}, {spec.token_budget:,} tokens{overlap}",
            prefill_cost.breakdown(spec.token_budget, context / 2, 0, 0),
        )
    ]
    for batch in sorted({1, max(1, int(served.mean_running))}):
        label = f"decode, {batch} sequence{'s' if batch > 1 else ''}{overlap}"
        iterations.append((label, cost.breakdown(0, 0, width * batch, context)))
    return {
        "Serving latency distributions": latency_cdf_plot(served.ttft_samples_s, served.tpot_samples_s),
        "Serving throughput against latency": serving_curve_plot(points),
        "Where an iteration's time goes": iteration_plot(iterations),
    }
