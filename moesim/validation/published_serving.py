"""moesim's serving predictions beside published serving figures (the serving section of `validation/PUBLISHED.md`):
what the rows share (`ServingFigure`, a shipped scenario by name, the operating-point sampler, the table's rows) and
MLPerf's row; DeepSeek's rows are in `published_deepseek.py`, the section is put together by `published.py`.

* MLPerf Inference v4.1, Mixtral 8x7B on one DGX H100 (NVIDIA, closed division): Offline tokens/s (every query
  there at once), and Server tokens/s, the highest Poisson rate whose TTFT and TPOT stay within MLPerf's 99th
  percentile bounds (2 s, 200 ms) over MLPerf's ten minutes; the mean TTFT and TPOT on the iterations the
  published figures imply (Little's law), as for DeepSeek's decode.

Where a figure depends on what its source does not state, the row says which assumption was made.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from moesim.scenario import Scenario, load_scenario
from moesim.serving import simulate_serving
from moesim.serving.iteration import IterationCost

REPO = Path(__file__).resolve().parent.parent.parent

WITHIN = 0.20
"""The serving issue's bar: a published figure within 20% of moesim's prediction."""

MLPERF = "mlperf-v4.1-mixtral-8x7b-dgx-h100.yaml"
MLPERF_BOUNDS_S = (2.0, 0.2)
"""MLPerf Inference's Server bounds for Mixtral 8x7B: 99th percentile TTFT and TPOT."""
SERVER_SECONDS = 600.0
"""MLPerf's shortest Server run: ten minutes of arrivals, so that a rate above what the engine sustains shows as a
queue that outgrows the TTFT bound (a two-minute run let a rate 6% above the engine's capacity pass)."""
MLPERF_OFFLINE_TOKENS_PER_S = 52415.9
MLPERF_SERVER_TOKENS_PER_S = 50795.6
MLPERF_MEAN_TTFT_S = 0.180
MLPERF_MEAN_TPOT_S = 0.1026


@dataclass(frozen=True)
class ServingFigure:
    """One published serving figure beside moesim's."""

    deployment: str
    figure: str
    unit: str
    published: float
    moesim: float
    source: str
    assumptions: str


def published_scenario(name: str, overrides: list[str] | None = None) -> Scenario:
    """A shipped scenario by file name, with overrides."""
    return load_scenario(REPO / "scenarios" / name, overrides or [])


def _highest_rate(meets: Callable[[float], bool], low: float, high: float, steps: int = 7) -> float:
    """The highest rate in [low, high] that `meets` accepts, by bisection (`low` is assumed to meet it)."""
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if meets(middle) else (low, middle)
    return low


def iterations_at_operating_point(
    cost: Any,
    requests_per_s: float,
    running: int,
    inputs: list[int],
    mean_output: float,
    iteration_s: float,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean iteration and mean TTFT (seconds) of an in-flight batching engine that prefills each prompt whole in
    the iteration after it arrives (TensorRT-LLM without chunked context), on the iterations a published operating
    point implies: `running` sequences decoding, and the prompts that arrive at `requests_per_s` during one
    published iteration (`iteration_s`), lengths drawn from `inputs`. moesim's cost model times each sampled
    iteration. A request waits for the iteration in flight (the mean residual of the iterations' lengths, longer
    ones more likely met) and then for the iteration that prefills it (those with more prompts more likely)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(inputs)
    decode_context = float(lengths.mean()) + mean_output / 2
    times, prompts = [], []
    for _ in range(samples):
        drawn = rng.choice(lengths, size=rng.poisson(requests_per_s * iteration_s))
        tokens = int(drawn.sum())
        context = float((drawn * drawn / 2).sum() / tokens) if tokens else 0.0  # causal: half its own prompt
        times.append(cost.seconds(tokens, context, running, decode_context))
        prompts.append(len(drawn))
    seconds, count = np.asarray(times), np.asarray(prompts)
    residual = float((seconds**2).mean() / (2 * seconds.mean()))
    own = float((seconds * count).sum() / max(1, count.sum()))
    return float(seconds.mean()), residual + own


def mlperf_figures() -> list[ServingFigure]:
    """Offline and Server on eight single-GPU FP8 replicas, the benchmark's own request lengths."""
    offline_scenario = published_scenario(MLPERF)
    cost = IterationCost(offline_scenario)
    offline = simulate_serving(offline_scenario, cost)
    spec = offline_scenario.serving
    outputs = spec.output_tokens if isinstance(spec.output_tokens, list) else [spec.output_tokens]
    mean_output = statistics.mean(outputs)

    runs: dict[float, Any] = {}  # by rate: the bisection's last accepted rate is served once

    def served(rate: float) -> Any:
        if rate not in runs:
            update = {"arrival": "poisson", "request_rate": rate, "num_requests": int(rate * SERVER_SECONDS)}
            served_scenario = offline_scenario.model_copy(update={"serving": spec.model_copy(update=update)})
            runs[rate] = simulate_serving(served_scenario, cost)
        return runs[rate]

    def meets(rate: float) -> bool:
        result = served(rate)
        return result.ttft_s[99] <= MLPERF_BOUNDS_S[0] and result.tpot_s[99] <= MLPERF_BOUNDS_S[1]

    offline_rate = offline.output_tokens_per_s / mean_output
    rate = _highest_rate(meets, 0.5 * offline_rate, 1.2 * offline_rate)
    server = served(rate)
    label = f"{offline_scenario.name} (8 x H100-SXM)"
    source = "MLPerf Inference v4.1 results, closed division, NVIDIA DGX H100 (TensorRT-LLM)"
    lengths = (
        "the benchmark's request lengths (1,000 of its 15,000 pairs, stratified by output); the engine's batch "
        f"limits from the round's submission code (token budget {spec.token_budget:,}, {spec.max_running} "
        "sequences a GPU); an FP8 KV cache and fused engine kernels assumed"
    )
    gpus = offline_scenario.cluster.world_size
    inputs = spec.input_tokens if isinstance(spec.input_tokens, list) else [spec.input_tokens]
    published_rate = MLPERF_SERVER_TOKENS_PER_S / mean_output / gpus  # requests/s a GPU
    published_running = round(MLPERF_SERVER_TOKENS_PER_S / gpus * MLPERF_MEAN_TPOT_S)  # Little's law
    step, first_token = iterations_at_operating_point(
        cost, published_rate, published_running, inputs, mean_output, MLPERF_MEAN_TPOT_S
    )
    own_ttft, own_tpot = statistics.mean(server.ttft_samples_s), statistics.mean(server.tpot_samples_s)
    point = (
        f"on the iterations the published figures imply: {published_running} sequences decoding a GPU (Little's "
        f"law: {MLPERF_SERVER_TOKENS_PER_S / gpus:,.0f} tokens/s x {MLPERF_MEAN_TPOT_S * 1e3:.1f} ms) and the "
        f"prompts arriving at NVIDIA's rate ({published_rate:.1f} a second a GPU) during one "
        f"{MLPERF_MEAN_TPOT_S * 1e3:.1f} ms iteration, each prefilled whole in the "
        "iteration after it arrives (TensorRT-LLM's in-flight batching without chunked context, as the next "
        f"round's config states), timed by moesim's cost model: its mean iteration is {step * 1e3:.1f} ms (TPOT); "
        "TTFT adds the wait for the iteration in flight. At moesim's own Server rate its means are "
        f"{own_ttft * 1e3:.0f} ms and {own_tpot * 1e3:.1f} ms: near capacity the means grow as 1 / (1 - load), "
        f"so they amplify any error in the engine's capacity (Offline "
        f"{offline.output_tokens_per_s / MLPERF_OFFLINE_TOKENS_PER_S - 1:.0%} high) several-fold; "
    )
    return [
        ServingFigure(
            label,
            "Offline",
            "output tokens/s",
            MLPERF_OFFLINE_TOKENS_PER_S,
            offline.output_tokens_per_s,
            source,
            lengths,
        ),
        ServingFigure(
            label,
            "Server (p99 TTFT <= 2 s, TPOT <= 200 ms)",
            "output tokens/s",
            MLPERF_SERVER_TOKENS_PER_S,
            rate * mean_output,
            source,
            "the highest Poisson rate within the bounds over MLPerf's ten minutes, found by bisection; " + lengths,
        ),
        ServingFigure(
            label,
            "Server, mean TTFT",
            "ms",
            MLPERF_MEAN_TTFT_S * 1e3,
            first_token * 1e3,
            source,
            point + lengths,
        ),
        ServingFigure(
            label,
            "Server, mean TPOT",
            "ms",
            MLPERF_MEAN_TPOT_S * 1e3,
            step * 1e3,
            source,
            point + lengths,
        ),
    ]


def _value(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


TABLE_HEADER = (
    "| deployment | figure | published | moesim | moesim / published | source | assumptions |",
    "| --- | --- | ---: | ---: | ---: | --- | --- |",
)


def table_rows(rows: list[ServingFigure]) -> list[str]:
    lines = []
    for row in rows:
        ratio = row.moesim / row.published
        mark = "" if abs(ratio - 1) <= WITHIN else " (outside the bar)"
        lines.append(
            f"| {row.deployment} | {row.figure} | {_value(row.published, row.unit)} | "
            f"{_value(row.moesim, row.unit)} | {ratio:.2f}{mark} | {row.source} | {row.assumptions} |"
        )
    return lines
