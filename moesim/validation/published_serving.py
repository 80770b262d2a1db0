"""moesim's serving predictions beside published serving figures (the serving section of `validation/PUBLISHED.md`).

Two public deployments, each with its scenario in `scenarios/`:

* MLPerf Inference v4.1, Mixtral 8x7B on one DGX H100 (NVIDIA, closed division): Offline tokens/s (every query
  there at once), and Server tokens/s, the highest Poisson rate whose TTFT and TPOT stay within MLPerf's 99th
  percentile bounds (2 s, 200 ms) over MLPerf's ten minutes; the mean TTFT and TPOT on the iterations the
  published figures imply (Little's law), as for DeepSeek's decode.
* DeepSeek-V3/R1 as DeepSeek serves it on H800 (open-infra-index, 2025-03-01): a decode node's output tokens/s
  and a user's tokens/s at the batch those two figures imply, and a prefill node's input tokens/s.

Where a figure depends on what its source does not state, the row says which assumption was made.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from moesim.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from moesim.serving.iteration import IterationCost

WITHIN = 0.20
"""The serving issue's bar: a published figure within 20% of moesim's prediction."""

MLPERF = "mlperf-v4.1-mixtral-8x7b-dgx-h100.yaml"
DEEPSEEK = "deepseek-v3-serving-h800.yaml"
MLPERF_BOUNDS_S = (2.0, 0.2)
"""MLPerf Inference's Server bounds for Mixtral 8x7B: 99th percentile TTFT and TPOT."""
SERVER_SECONDS = 600.0
"""MLPerf's shortest Server run: ten minutes of arrivals, so that a rate above what the engine sustains shows as a
queue that outgrows the TTFT bound (a two-minute run let a rate 6% above the engine's capacity pass)."""
MLPERF_OFFLINE_TOKENS_PER_S = 52415.9
MLPERF_SERVER_TOKENS_PER_S = 50795.6
MLPERF_MEAN_TTFT_S = 0.180
MLPERF_MEAN_TPOT_S = 0.1026
DEEPSEEK_USER_TOKENS_PER_S = 21.0
"""The middle of DeepSeek's '20-22 tokens per second' per user."""
DEEPSEEK_DECODE_NODE_TOKENS_PER_S = 14.8e3
DEEPSEEK_PREFILL_NODE_TOKENS_PER_S = 73.7e3


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


def _scenario(name: str, overrides: list[str] | None = None) -> Scenario:
    from moesim.validation.published import REPO

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
    from moesim.serving import simulate_serving
    from moesim.serving.iteration import IterationCost

    offline_scenario = _scenario(MLPERF)
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


@functools.lru_cache(maxsize=1)
def _prefill_unit() -> tuple[Scenario, "IterationCost"]:
    """DeepSeek's prefill unit (4 nodes, EP32) and its iteration times, built once for the production row and the
    profile's."""
    from moesim.serving import prefill_pool_scenario
    from moesim.serving.iteration import IterationCost

    prefill = prefill_pool_scenario(_scenario(DEEPSEEK, ["serving.prefill_pool.num_nodes=4"]))
    return prefill, IterationCost(prefill)


def deepseek_figures() -> list[ServingFigure]:
    """A decode node at the batch DeepSeek's figures imply, and a prefill node's input capacity."""
    from moesim.serving.iteration import IterationCost

    decode = _scenario(DEEPSEEK, ["serving.prefill_pool=null"])
    spec = decode.serving
    per_gpu = DEEPSEEK_DECODE_NODE_TOKENS_PER_S / decode.cluster.gpus_per_node
    batch = round(per_gpu / DEEPSEEK_USER_TOKENS_PER_S)  # Little's law: sequences in decode per GPU
    kv_length = spec.input_tokens + spec.output_tokens / 2  # type: ignore[operator]
    width = 1 + spec.speculative_tokens
    step = IterationCost(decode).seconds(0, 0, width * batch, kv_length, spec.speculative_tokens * batch)
    user = spec.tokens_per_step / step
    prefill, prefill_cost = _prefill_unit()
    hit = spec.prefix_cache_hit_rate
    computed = spec.input_tokens * (1 - hit)  # type: ignore[operator]
    context = spec.input_tokens * hit + computed / 2  # type: ignore[operator]
    tokens = spec.token_budget
    prefill_step = prefill_cost.seconds(tokens, context, 0, 0)
    prefill_node = prefill.cluster.gpus_per_node * tokens / prefill_step / (1 - hit)
    computed_node = DEEPSEEK_PREFILL_NODE_TOKENS_PER_S * (1 - hit)
    source = "DeepSeek, open-infra-index, 'DeepSeek-V3/R1 Inference System Overview' (2025-03-01), 24 h averages"
    lengths = (
        "requests of 4,384 input and 1,211 output tokens (from the day's 608B input and 168B output tokens and the "
        "average KV length 4,989); MTP acceptance 85%; DeepEP's normal kernels on 20 SMs (its low-latency ones "
        "hold none in flight); fused engine kernels"
    )
    label = f"{decode.name} (decode 18 x 8 H800, prefill 4 x 8 H800)"
    implied = spec.tokens_per_step / DEEPSEEK_USER_TOKENS_PER_S
    batch_note = (
        f"at the batch the two published figures imply, {batch} sequences a GPU (1,850 tokens/s a GPU over 21 "
        f"tokens/s a user), moesim's decode step is {step * 1e3:.1f} ms against the {implied * 1e3:.0f} ms they "
        "imply. Each micro-batch runs its own attention kernels, under the other's all-to-alls as DeepSeek "
        "describes its overlap, and DeepEP's low-latency kernels hold the SMs for their send and receive phases "
        "only (the step-level checks below hold the same model against DeepSeek's own trace); "
    )
    return [
        ServingFigure(
            label,
            f"decode, {batch} sequences a GPU",
            "output tokens/s per node",
            DEEPSEEK_DECODE_NODE_TOKENS_PER_S,
            decode.cluster.gpus_per_node * batch * user,
            source,
            batch_note + lengths,
        ),
        ServingFigure(
            label,
            f"decode, {batch} sequences a GPU",
            "output tokens/s per user",
            DEEPSEEK_USER_TOKENS_PER_S,
            user,
            source + " (20-22 per user)",
            batch_note + lengths,
        ),
        ServingFigure(
            label,
            "prefill, saturated",
            "input tokens/s per node (cache hits included)",
            DEEPSEEK_PREFILL_NODE_TOKENS_PER_S,
            prefill_node,
            source,
            f"moesim's is a unit's capacity ({tokens:,} tokens a GPU an iteration, two micro-batches overlapped, "
            "attention included, as DeepSeek describes; 56.3% of each prompt from the cache, as the day's hit "
            "rate); DeepSeek's is a day's average of a pool sized for its latency, whose load the source does not "
            f"state (73.7K is {DEEPSEEK_PREFILL_NODE_TOKENS_PER_S / prefill_node:.0%} of moesim's capacity). "
            f"DeepSeek's own profile runs a prefill node at {DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S:,.0f} "
            f"computed tokens/s, {DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S / computed_node:.2f}x the "
            f"{computed_node:,.0f} the day averaged (73.7K less the 56.3% from the cache; moesim against that "
            "profile: the step-level rows below): the day's figure is a load, not a capacity; " + lengths,
        ),
    ]


DEEPSEEK_PROFILE_DECODE_STEP_S = 0.096
"""DeepSeek's profile-data decode.json (EP128, 128 requests a GPU, 4K prompts, two micro-batches, MTP): one decode
step end to end, 87.3 ms of it in the 61 layers, as read from the trace by zdszero.github.io ('deepseek_profile',
D4 profile, H800 column); its FlashMLA kernel takes 255 us per micro-batch and layer, its attention 388 us."""
DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S = 62713.0
"""DeepSeek's profile-data prefill.json (EP32, 16,384 tokens a GPU, 4K prompts), as a node's input tokens/s: the
SGLang team's reading of it (lmsys.org, 'Deploying DeepSeek with PD Disaggregation and Large-scale Expert
Parallelism on 96 H100 GPUs', 2025-05-05, Overall Throughput table)."""
SGLANG_DECODE_SEQUENCES = 256
SGLANG_DECODE_NODE_TOKENS_PER_S = 22282.0
"""The same post: SGLang's decode on 9 x 8 H100 (EP72, 288 expert slots by EPLB, two-batch overlap, DeepEP's
low-latency kernels), 256 sequences a GPU, 2,000-token inputs, no MTP: output tokens/s per node."""


def deepseek_step_checks() -> list[ServingFigure]:
    """The decode and prefill iterations against DeepSeek's own profiles and SGLang's H100 run, at the batches
    those sources state: the production rows above rest on loads the sources do not state, these do not."""
    from moesim.serving.iteration import IterationCost

    profile = _scenario(DEEPSEEK, ["serving.prefill_pool=null", "cluster.num_nodes=16", "parallelism.ep_size=128"])
    spec = profile.serving
    sequences = 128
    step = IterationCost(profile).seconds(0, 0, 2 * sequences, 4096, sequences)
    sglang = _scenario(
        DEEPSEEK,
        [
            "serving.prefill_pool=null",
            "cluster.preset=dgx-h100",
            "cluster.num_nodes=9",
            "parallelism.ep_size=72",
            "serving.speculative_tokens=0",
        ],
    )
    sglang_step = IterationCost(sglang).seconds(0, 0, SGLANG_DECODE_SEQUENCES, 2000)
    prefill, prefill_cost = _prefill_unit()
    tokens = spec.token_budget
    prefill_step = prefill_cost.seconds(tokens, 4096 / 2, 0, 0)
    lmsys = "lmsys.org, SGLang team, 'Deploying DeepSeek with PD Disaggregation and Large-scale EP' (2025-05-05)"
    common = (
        "DeepSeek-V3's serving scenario (FP8 GEMMs and dispatch, DeepEP's normal kernels on 20 SMs, 32 redundant "
        "experts)"
    )
    return [
        ServingFigure(
            "DeepSeek profile-data decode.json (16 x 8 H800, EP128)",
            "decode step, 128 requests a GPU, 4K context",
            "ms",
            DEEPSEEK_PROFILE_DECODE_STEP_S * 1e3,
            step * 1e3,
            "DeepSeek profile-data (decode.json), step read from the trace by zdszero.github.io: 96 ms end to end",
            f"{common} at EP128 on 16 nodes; two micro-batches of 64 requests with one MTP draft each; a "
            "perfectly balanced routing, as the profile simulates",
        ),
        ServingFigure(
            "SGLang on 9 x 8 H100 (EP72, decode)",
            f"decode, {SGLANG_DECODE_SEQUENCES} sequences a GPU, 2K context",
            "output tokens/s per node",
            SGLANG_DECODE_NODE_TOKENS_PER_S,
            sglang.cluster.gpus_per_node * SGLANG_DECODE_SEQUENCES / sglang_step,
            lmsys,
            f"{common} on dgx-h100 nodes, EP72 with 288 expert slots, no MTP; SGLang reports its MoE kernels 25% "
            "slower than DeepSeek's and unfused small kernels ('Other Kernels'); moesim assumes an engine's fused "
            "kernels",
        ),
        ServingFigure(
            "DeepSeek profile-data prefill.json (4 x 8 H800, EP32)",
            "prefill, 16,384 tokens a GPU, 4K prompts",
            "input tokens/s per node",
            DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S,
            prefill.cluster.gpus_per_node * tokens / prefill_step,
            lmsys + " (its reading of DeepSeek's prefill.json)",
            f"{common}; two micro-batches; the iteration is bound by DeepEP's RDMA transfers, where moesim's rate "
            "at EP 32 is below DeepEP's published one (DeepEP's table above)",
        ),
    ]


def _value(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


TABLE_HEADER = (
    "| deployment | figure | published | moesim | moesim / published | source | assumptions |",
    "| --- | --- | ---: | ---: | ---: | --- | --- |",
)


def serving_rows() -> list[str]:
    """The serving section of PUBLISHED.md."""
    lines = [
        f"The bar: within {WITHIN:.0%}. `moesim serve` on each scenario runs the whole deployment; these rows "
        "put each published figure beside moesim's at the same operating point.",
        "",
        *TABLE_HEADER,
    ]
    lines += _table_rows(mlperf_figures() + deepseek_figures())
    lines += [
        "",
        "### DeepSeek-V3's iterations at stated batches",
        "",
        "The production rows rest on loads DeepSeek does not state; these hold the same iteration model against "
        "DeepSeek's own profiles and SGLang's H100 run, whose batches and lengths are stated.",
        "",
        *TABLE_HEADER,
    ]
    return lines + _table_rows(deepseek_step_checks())


def _table_rows(rows: list[ServingFigure]) -> list[str]:
    lines = []
    for row in rows:
        ratio = row.moesim / row.published
        mark = "" if abs(ratio - 1) <= WITHIN else " (outside the bar)"
        lines.append(
            f"| {row.deployment} | {row.figure} | {_value(row.published, row.unit)} | "
            f"{_value(row.moesim, row.unit)} | {ratio:.2f}{mark} | {row.source} | {row.assumptions} |"
        )
    return lines
