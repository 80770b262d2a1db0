"""A request stream served under continuous batching on the scenario's deployment (`moesim serve`): the engine loop
on one attention rank, one pool or a disaggregated prefill pool, open streams and closed loops, and what the
stream gets (latency percentiles, throughput, cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from moesim.cluster.power import energy_per_million_tokens, power_dollars_per_hour
from moesim.cost.engine_tables import engine_words
from moesim.models import accounting
from moesim.scenario import Scenario
from moesim.scenario.serving import ServingSpec
from moesim.serving.capacity import pool_capacity
from moesim.serving.checked import checked_words, runs_words
from moesim.serving.dealing import MIN_COUNTED, deal, engine_requests, is_batch
from moesim.serving.engine import OVERLAP_SCHEDULERS, run_engine
from moesim.serving.iteration import IterationCost
from moesim.serving.pools import Pool, deployment_pools, prefill_pool_scenario
from moesim.serving.ranks import AttentionRecorder, ranks_per_group
from moesim.serving.throughput import Served, measured, open_stream, pool_load, pooled

PERCENTILES = (50, 90, 99)
CURVE_GENERATIONS = 8
"""A concurrency curve's point serves at least this many times its concurrency in requests."""


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
    mean_running: float  # sequences an engine runs on average while busy (the decode pool's when disaggregated)
    peak_running: int
    kv_capacity_tokens: int
    notes: list[str] = field(default_factory=list)
    busy_share: float = 0.0  # of the simulated rank's time (the decode pool's when disaggregated)
    ttft_samples_s: list[float] = field(default_factory=list)  # every counted request's, for the CDF plots
    tpot_samples_s: list[float] = field(default_factory=list)
    load: Optional[float] = None
    """The offered rate over the capacity of an engine at its largest steady batch (`capacity.pool_capacity`; the
    busier pool's when disaggregated); None for a closed loop, which never offers more than it serves. Below 1 the
    queue stays bounded, whatever share of the time the engines are busy."""
    energy_kwh_per_million_tokens: Optional[float] = None
    """Energy per million output tokens, every GPU of the deployment at its board power (`cluster.power`)."""
    energy_source: str = ""

    @property
    def overloaded(self) -> bool:
        """Requests arrive faster than the deployment serves them: the queue, and every latency, grows with the
        run's length (no steady state to report)."""
        return self.load is not None and self.load >= 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "overloaded": self.overloaded}


def _percentiles(values: list[float]) -> dict[int, float]:
    return {p: float(np.percentile(values, p)) for p in PERCENTILES} if values else {p: 0.0 for p in PERCENTILES}


def simulate_serving(
    scenario: Scenario, cost: Optional[IterationCost] = None, prefill_cost: Optional[IterationCost] = None
) -> ServingResult:
    """Serve the scenario's `serving` requests and measure them (`cost`: iteration times already built for this
    deployment, or for its decode pool when disaggregated, and `prefill_cost` for its prefill pool, e.g. by
    `concurrency_curve`: building them is most of a run's time), with the energy per million output tokens."""
    result = _served(scenario, cost, prefill_cost)
    energy = energy_per_million_tokens(scenario.cluster.gpu, result.output_tokens_per_s_per_gpu)
    if energy is not None:
        result.energy_kwh_per_million_tokens, result.energy_source = energy.kwh_per_million_tokens, energy.source
    return result


def _served(
    scenario: Scenario, cost: Optional[IterationCost] = None, prefill_cost: Optional[IterationCost] = None
) -> ServingResult:
    """`simulate_serving` without the energy."""
    par, spec = scenario.parallelism, scenario.serving
    if spec.prefill_pool is not None:
        return _disaggregated(scenario, prefill_cost, cost)
    gpus = scenario.cluster.world_size
    (pool,) = deployment_pools(scenario, cost, prefill_cost)
    ranks, cost, capacity = pool.ranks, pool.cost, pool.kv_capacity
    recorder = AttentionRecorder(cost)
    dealt = deal(spec.concurrency, ranks) if spec.arrival == "closed" else None
    held = dealt.most if dealt else 0
    run = run_engine(
        spec, recorder.seconds, capacity, ranks, scenario.seed, count=engine_requests(spec, ranks, held), held=held
    )
    load, served_rate, load_note = pool_load(spec, cost, capacity, ranks, "both")
    lockstep = ranks_per_group(scenario) > 1
    counted, served = measured(spec, run, ranks, open_stream(spec, served_rate, load), dealt, lockstep)
    if dealt and not dealt.even and not lockstep and dealt.lighter and not is_batch(spec):
        light = run_engine(
            spec,
            cost.seconds,
            capacity,
            ranks,
            scenario.seed,
            count=engine_requests(spec, ranks, dealt.lighter),
            held=dealt.lighter,
        )
        counted, served = pooled((counted, served), measured(spec, light, ranks, None, dealt, lockstep, True))
    ttft = [r.first_token_s - r.arrival_s for r in counted if r.first_token_s is not None]
    tpot = _time_per_token(counted)
    e2e = [r.finish_s - r.arrival_s for r in counted if r.finish_s is not None]
    window = run.end_s
    output = served.output_tokens_per_s
    inputs = served.input_tokens_per_s
    per_gpu = output / gpus
    engines = (
        f"{ranks // par.pp_size} attention ranks of {par.tp_size * par.cp_size * par.pp_size} GPU(s) ({par.pp_size} "
        f"pipeline stages), each running {par.pp_size} engines with a batch in flight per stage"
        if par.pp_size > 1
        else f"{ranks} attention ranks of {par.tp_size * par.cp_size} GPU(s)"
    )
    notes = [
        f"{engines}; each engine serves 1/{ranks} of the requests; one simulated: {run.iterations:,} iterations, "
        f"{run.busy_s / window:.0%} busy",
        f"KV cache per engine: {capacity:,} tokens; iterations that left a request waiting for it: "
        f"{run.kv_limited_iterations:,}",
        f"latencies over {len(counted)} of {len(run.requests)} requests an engine"
        + (
            f" (serving.num_requests raised from {spec.num_requests:,} for {MIN_COUNTED} at least)"
            if len(run.requests) > max(1, spec.num_requests // ranks)
            else ""
        ),
        *load_note,
        served.note,
        *recorder.spread_note(scenario),
        _rests_on(scenario, cost),
    ]
    if par.pp_size > 1:
        notes.append(
            "pipeline: an iteration takes max(sum of stages + activation hops, stages x slowest stage), the other "
            "engines keeping the stages busy (at light load, when they do not, the sum alone applies)"
        )
    if spec.speculative_tokens:
        notes.append(
            f"speculative decoding: {spec.speculative_tokens} draft token(s) a step from the MTP module, "
            f"acceptance {spec.acceptance_rate:.0%} each: {spec.tokens_per_step:.2f} tokens a step"
        )
    if cost.two_modes:
        notes.append("DeepEP: normal kernels in iterations that prefill, low-latency kernels in decode-only ones")
    if spec.engine in OVERLAP_SCHEDULERS:
        notes.append(
            "each token reported one iteration after it is computed, a finished sequence running one more decode "
            f"step: {OVERLAP_SCHEDULERS[spec.engine]}"
        )
    dollars = _dollars_per_million(hourly_price(scenario), gpus, output)
    return ServingResult(
        ttft_s=_percentiles(ttft),
        tpot_s=_percentiles(tpot),
        e2e_s=_percentiles(e2e),
        output_tokens_per_s=output,
        input_tokens_per_s=inputs,
        output_tokens_per_s_per_gpu=per_gpu,
        requests_per_s=served.requests_per_s,
        dollars_per_million_output_tokens=dollars,
        attention_ranks=ranks,
        gpus=gpus,
        mean_running=run.mean_running,
        peak_running=run.peak_running,
        kv_capacity_tokens=capacity,
        notes=notes,
        busy_share=run.busy_s / window,
        ttft_samples_s=ttft,
        tpot_samples_s=tpot,
        load=load,
    )


def _rests_on(scenario: Scenario, cost: IterationCost) -> str:
    """What the iteration times rest on (the engine's measured kernels where one is named), and how they were
    checked on real GPUs."""
    gpu, serving = scenario.cluster.gpu.name, scenario.serving
    runs = runs_words(gpu, serving.engine)
    return (
        f"{gpu} iteration times: {cost.cost.source}; {checked_words(gpu, cost.cost.source)}; "
        f"{engine_words(gpu, serving.engine, serving.engine_version)}" + (f"; {runs}" if runs else "")
    )


def hourly_price(scenario: Scenario) -> float:
    """Dollars per GPU-hour: `serving.price_per_gpu_hour`, plus the GPU's board power at
    `serving.power_price_per_kwh` where one is given."""
    spec = scenario.serving
    return spec.price_per_gpu_hour + power_dollars_per_hour(scenario.cluster.gpu, spec.power_price_per_kwh)


def price_words(spec: ServingSpec) -> str:
    """The hourly price as `serve` shows it: "$3/GPU-h", with "+ power $0.12/kWh" where power is priced."""
    power = f" + power ${spec.power_price_per_kwh:g}/kWh" if spec.power_price_per_kwh else ""
    return f"${spec.price_per_gpu_hour:g}/GPU-h{power}"


def _dollars_per_million(price_per_gpu_hour: float, gpus: int, output_tokens_per_s: float) -> float:
    """Dollars per million output tokens of `gpus` GPUs at their hourly price."""
    return price_per_gpu_hour * gpus / (output_tokens_per_s * 3600) * 1e6 if output_tokens_per_s else float("inf")


def _time_per_token(requests: list) -> list[float]:  # type: ignore[type-arg]
    """Each finished request's seconds per output token after its first."""
    return [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        for r in requests
        if r.finish_s is not None and r.first_token_s is not None and r.output_tokens > 1
    ]


def _disaggregated(
    scenario: Scenario, prefill_cost: Optional[IterationCost], decode_cost: Optional[IterationCost]
) -> ServingResult:
    """Prefill and decode on separate pools. Poisson arrivals split evenly over a pool's ranks stay Poisson, so one
    rank of each pool is simulated at its share of the rate; the decode pool's arrivals are taken as Poisson too
    (a request reaches it when its prompt is done and its KV cache has crossed the network, in the prefill pool's
    NICs' time). A request's end-to-end latency pairs the i-th request's time to first token with the i-th
    decoded request's time per output token."""
    spec = scenario.serving
    pools = deployment_pools(scenario, decode_cost, prefill_cost)
    (prefill_pool, decode_pool), recorders = pools, [AttentionRecorder(pool.cost) for pool in pools]
    prefill, prefill_ranks = prefill_pool.scenario, prefill_pool.ranks
    decode, decode_ranks, decode_capacity = decode_pool.scenario, decode_pool.ranks, decode_pool.kv_capacity
    held = deal(spec.concurrency, decode_ranks).most if spec.arrival == "closed" else 0
    decode_run = run_engine(
        spec,
        recorders[1].seconds,
        decode_capacity,
        decode_ranks,
        scenario.seed,
        "decode",
        count=engine_requests(spec, decode_ranks, held),
        held=held,
    )
    loads = [
        pool_load(spec, pool.cost, pool.kv_capacity, pool.ranks, pool.phase, f"a {pool.phase} engine") for pool in pools
    ]
    pool_loads = [load for load, _, _ in loads if load is not None]
    rates = [rate for _, rate, _ in loads if rate is not None]
    stream = open_stream(spec, min(rates) if rates else None, max(pool_loads) if pool_loads else None)
    decoded, served = measured(spec, decode_run, decode_ranks, stream)
    prefill_spec, prefill_stream, closed_note, served = _prefill_feed(spec, prefill_pool, served, stream)
    prefill_run = run_engine(
        prefill_spec, recorders[0].seconds, prefill_pool.kv_capacity, prefill_ranks, scenario.seed, "prefill"
    )
    prompted, prefilled = measured(prefill_spec, prefill_run, prefill_ranks, prefill_stream)
    topology_nic = prefill.cluster.nic_gbps * 1e9 / 8 * prefill.parallelism.tp_size
    kv_per_token = accounting.kv_cache_bytes_per_token(scenario.model, scenario.workload.precision)
    latency = prefill.cluster.network_latency_us * 1e-6
    ttft = [
        r.first_token_s - r.arrival_s + r.input_tokens * kv_per_token / topology_nic + latency
        for r in prompted
        if r.first_token_s is not None
    ]
    tpot = _time_per_token(decoded)
    outputs = [r.output_tokens for r in decoded]
    e2e = [first + per * (out - 1) for first, per, out in zip(ttft, tpot, outputs)]
    gpus = prefill.cluster.world_size + decode.cluster.world_size
    output = served.output_tokens_per_s
    inputs = prefilled.input_tokens_per_s
    dollars = _dollars_per_million(hourly_price(scenario), gpus, output)
    notes = [
        f"disaggregated: prefill on {prefill.cluster.world_size} GPUs ({prefill_ranks} ranks, "
        f"{prefill_run.busy_s / prefill_run.end_s:.0%} busy), decode on {decode.cluster.world_size} GPUs "
        f"({decode_ranks} ranks, {decode_run.busy_s / decode_run.end_s:.0%} busy); the KV cache crosses the prefill "
        f"rank's NICs ({kv_per_token / 1e3:,.1f} kB a token)",
        (closed_note or "the decode pool's arrivals are taken as Poisson at the request rate")
        + "; end-to-end latencies pair the two pools' requests in order",
        *(line for _, _, lines in loads for line in lines),
        *dict.fromkeys((prefilled.note, served.note)),  # once where both pools' figures come from the same place
        *(
            line
            for pool, recorder in zip(pools, recorders)
            for line in recorder.spread_note(pool.scenario, f" ({pool.phase})")
        ),
        _rests_on(decode, decode_pool.cost),
    ]
    return ServingResult(
        ttft_s=_percentiles(ttft),
        tpot_s=_percentiles(tpot),
        e2e_s=_percentiles(e2e),
        output_tokens_per_s=output,
        input_tokens_per_s=inputs,
        output_tokens_per_s_per_gpu=output / gpus,
        requests_per_s=served.requests_per_s,
        dollars_per_million_output_tokens=dollars,
        attention_ranks=prefill_ranks + decode_ranks,
        gpus=gpus,
        mean_running=decode_run.mean_running,
        peak_running=decode_run.peak_running,
        kv_capacity_tokens=decode_capacity,
        notes=notes,
        busy_share=max(decode_run.busy_s / decode_run.end_s, prefill_run.busy_s / prefill_run.end_s),
        ttft_samples_s=ttft,
        tpot_samples_s=tpot,
        load=max(pool_loads) if pool_loads else None,
    )


def _prefill_feed(
    spec: ServingSpec, prefill_pool: "Pool", decoded: Served, stream: Optional[Served]
) -> tuple[ServingSpec, Optional[Served], str, Served]:
    """What the prefill pool is served, and what the deployment serves: an open stream's requests as they are;
    under a closed loop, the rate the decode pool serves at its concurrency, as a Poisson stream (the requests
    being prefilled at a time are few beside those decoding), unless that rate is beyond the prefill pool: then
    the deployment serves what the prefill pool can, and the pools' latencies are bounds (the prefill pool's queue
    taken as the whole concurrency, the decode pool's batch as all of it). Returns the prefill pool's requests,
    their stream, the note on the closed loop and the deployment's throughput."""
    if stream is not None:
        return spec, stream, "", decoded
    rate = decoded.requests_per_s
    capacity = pool_capacity(spec, prefill_pool.cost.seconds, prefill_pool.kv_capacity, "prefill")
    load = capacity.load(rate / prefill_pool.ranks)
    if load >= 1:
        most = capacity.requests_per_s * prefill_pool.ranks
        note = (
            f"closed loop: the prefill pool cannot keep up with the {rate:,.1f} requests/s the decode pool would "
            f"serve holding {spec.concurrency}: the deployment serves the prefill pool's {most:,.1f}; its TTFT is an "
            "upper bound (its queue taken as the whole concurrency), its TPOT too (the decode batch as all of it)"
        )
        limited = open_stream(spec, most, load)
        assert limited is not None
        return spec, None, note, limited
    fed = spec.model_copy(update={"arrival": "poisson", "request_rate": rate})
    note = (
        f"closed loop: the decode pool holds {spec.concurrency} requests; the {rate:,.1f} requests/s it serves reach "
        f"the prefill pool as a Poisson stream ({load:.0%} of its capacity)"
    )
    return fed, open_stream(fed, rate, load), note, decoded


def concurrency_curve(
    scenario: Scenario,
    levels: Sequence[int],
    cost: Optional[IterationCost] = None,
    prefill_cost: Optional[IterationCost] = None,
) -> list[tuple[int, ServingResult]]:
    """Throughput against latency: the scenario's requests served closed-loop at each concurrency in `levels`
    (the iteration times built once, or `cost`'s, and the prefill pool's once, or `prefill_cost`'s), each with
    at least `CURVE_GENERATIONS` times its concurrency in requests, so that the loop holds it for a while."""
    cost = cost or IterationCost(scenario)
    if scenario.serving.prefill_pool is not None and prefill_cost is None:
        prefill_cost = IterationCost(prefill_pool_scenario(scenario))
    curve = []
    for level in levels:
        requests = max(scenario.serving.num_requests, CURVE_GENERATIONS * int(level))
        serving = scenario.serving.model_copy(
            update={"arrival": "closed", "concurrency": int(level), "num_requests": requests}
        )
        served = simulate_serving(scenario.model_copy(update={"serving": serving}), cost, prefill_cost)
        curve.append((int(level), served))
    return curve
