"""Serving: requests under continuous batching on the scenario's deployment, and the latencies and throughput they
get (`moesim serve`).

`simulate_serving(scenario)` draws the `serving` section's requests, runs one attention rank's share of them through
the engine loop (`engine.run_engine`) with iteration times from the simulator (`iteration.IterationCost`), and
reports time to first token, time per output token and end-to-end latency (50th, 90th, 99th percentiles), tokens
per second and the cost per million output tokens. What is not modelled yet (the serving planner's issue): pipeline
parallelism, prefill/decode disaggregation, two-batch overlap and the search over deployments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.scenario import Scenario
from moesim.scenario.serving import most_tokens

if TYPE_CHECKING:
    from moesim.serving.iteration import IterationCost

PERCENTILES = (50, 90, 99)
WARM_UP_SHARE = 0.1
"""The first requests, while the batch fills, are not counted in the latencies."""


@dataclass
class ServingResult:
    """Latency percentiles (seconds), throughput and cost of a request stream on the deployment."""

    ttft_s: dict[int, float]
    tpot_s: dict[int, float]
    e2e_s: dict[int, float]
    output_tokens_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    requests_per_s: float
    dollars_per_million_output_tokens: float
    attention_ranks: int
    gpus: int
    mean_running: float
    kv_capacity_tokens: int
    notes: list[str] = field(default_factory=list)
    ttft_samples_s: list[float] = field(default_factory=list)  # every counted request's, for the CDF plots
    tpot_samples_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _percentiles(values: list[float]) -> dict[int, float]:
    return {p: float(np.percentile(values, p)) for p in PERCENTILES} if values else {p: 0.0 for p in PERCENTILES}


def simulate_serving(scenario: Scenario, cost: Optional["IterationCost"] = None) -> ServingResult:
    """Serve the scenario's `serving` requests and measure them (`cost`: iteration times already built for this
    deployment, e.g. by `concurrency_curve`)."""
    from moesim.serving.engine import run_engine
    from moesim.serving.iteration import IterationCost

    par, spec = scenario.parallelism, scenario.serving
    if scenario.workload.mode != "inference":
        raise MoesimError("workload.mode: `moesim serve` serves an inference deployment; set workload.mode=inference")
    if par.pp_size > 1:
        raise MoesimError("parallelism.pp_size: serving with pipeline parallelism is not modelled yet; set pp_size=1")
    gpus = scenario.cluster.world_size
    ranks = gpus // (par.tp_size * par.cp_size)  # attention ranks, each with its own requests
    cost = cost or IterationCost(scenario)
    capacity = cost.kv_capacity_tokens()
    largest = most_tokens(spec.input_tokens) + most_tokens(spec.output_tokens)
    if capacity < largest:
        raise MoesimError(
            f"serving: a request of up to {largest:,} tokens needs more KV cache than an attention rank holds "
            f"({capacity:,} tokens after weights and buffers); shorten the requests or add GPUs per rank"
        )
    run = run_engine(spec, cost.seconds, capacity, ranks, scenario.seed)
    counted = sorted(run.requests, key=lambda r: r.arrival_s)[int(len(run.requests) * WARM_UP_SHARE) :]
    ttft = [r.first_token_s - r.arrival_s for r in counted if r.first_token_s is not None]
    tpot = [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        for r in counted
        if r.finish_s is not None and r.first_token_s is not None and r.output_tokens > 1
    ]
    e2e = [r.finish_s - r.arrival_s for r in counted if r.finish_s is not None]
    window = run.end_s
    output = sum(r.output_tokens for r in run.requests) / window * ranks
    inputs = sum(r.input_tokens for r in run.requests) / window * ranks
    per_gpu = output / gpus
    notes = [
        f"{ranks} attention ranks of {par.tp_size * par.cp_size} GPU(s), each serving 1/{ranks} of the requests; "
        f"one simulated: {run.iterations:,} iterations, {run.busy_s / window:.0%} busy",
        f"KV cache per rank: {capacity:,} tokens; iterations that left a request waiting for it: "
        f"{run.kv_limited_iterations:,}",
        f"latencies over {len(counted)} requests (the first {WARM_UP_SHARE:.0%} of {len(run.requests)} are warm-up)",
        "not modelled yet: pipeline parallelism, prefill/decode disaggregation, two-batch overlap",
    ]
    if spec.speculative_tokens:
        notes.append(
            f"speculative decoding: {spec.speculative_tokens} draft token(s) a step from the MTP module, "
            f"acceptance {spec.acceptance_rate:.0%} each: {spec.tokens_per_step:.2f} tokens a step"
        )
    if cost.two_modes:
        notes.append("DeepEP: normal kernels in iterations that prefill, low-latency kernels in decode-only ones")
    dollars = spec.price_per_gpu_hour * gpus / (output * 3600) * 1e6 if output else float("inf")
    return ServingResult(
        _percentiles(ttft),
        _percentiles(tpot),
        _percentiles(e2e),
        output,
        inputs,
        per_gpu,
        len(run.requests) / window * ranks,
        dollars,
        ranks,
        gpus,
        run.peak_running,
        capacity,
        notes,
        ttft,
        tpot,
    )


def concurrency_curve(scenario: Scenario, levels: Sequence[int]) -> list[tuple[int, ServingResult]]:
    """Throughput against latency: the scenario's requests served closed-loop at each concurrency in `levels`
    (the iteration times are built once)."""
    from moesim.serving.iteration import IterationCost

    cost = IterationCost(scenario)
    curve = []
    for level in levels:
        serving = scenario.serving.model_copy(update={"arrival": "closed", "concurrency": int(level)})
        curve.append((int(level), simulate_serving(scenario.model_copy(update={"serving": serving}), cost)))
    return curve
