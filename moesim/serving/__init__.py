"""Serving: requests under continuous batching on the scenario's deployment, and the latencies and throughput they
get (`moesim serve`).

`simulate_serving(scenario)` draws the `serving` section's requests, runs one attention rank's share of them through
the engine loop (`engine.run_engine`) with iteration times from the simulator (`iteration.IterationCost`), and
reports time to first token, time per output token and end-to-end latency (50th, 90th, 99th percentiles), tokens
per second and the cost per million output tokens, on one pool or with a disaggregated prefill pool
(`serving.prefill_pool`), with two-batch overlap if asked, and with pipeline stages (`parallelism.pp_size`: a batch
in flight per stage, see `iteration`). The search over deployments is `moesim.planning.serving`.

This package is a face: the serving simulation lives in `simulate.py`, the engine loop in `engine.py`, an engine
iteration's price in `iteration.py` (from the simulator's public inference pass, `moesim.sim.inference`), the pools
of a deployment in `pools.py`, their capacity and load in `capacity.py` and `throughput.py`. `moesim run` on an
inference scenario prices a static batch instead (`moesim.sim.inference.static_batch`).
"""

from moesim.serving.pools import prefill_pool_scenario
from moesim.serving.simulate import (
    CURVE_GENERATIONS,
    PERCENTILES,
    ServingResult,
    concurrency_curve,
    simulate_serving,
)

__all__ = [
    "CURVE_GENERATIONS",
    "PERCENTILES",
    "ServingResult",
    "concurrency_curve",
    "prefill_pool_scenario",
    "simulate_serving",
]
