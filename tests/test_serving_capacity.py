"""A pool's capacity, the rate an engine serves at its largest steady batch: a closed form on a made-up engine,
the engine loop itself run saturated, and the load that tells a queue that stays bounded from one that grows."""

from __future__ import annotations

from typing import Any

import pytest

from moesim.scenario.serving import ServingSpec
from moesim.serving.capacity import pool_capacity
from moesim.serving.engine import run_engine


def iteration(
    prefill: float, prefill_context: float, decode: float, decode_context: float, drafts: int = 0, sampled: int = 0
) -> float:
    """A made-up engine: 4 ms an iteration, per-token costs, and attention growing with the context."""
    prompts = 0.0002 * prefill + 2e-8 * prefill * prefill_context
    return 0.004 + prompts + 0.00005 * decode + 1e-8 * decode * decode_context


def test_a_decode_pool_serves_its_largest_batch_in_closed_form() -> None:
    spec = ServingSpec(input_tokens=1000, output_tokens=100, max_running=128, token_budget=8192)
    capacity = pool_capacity(spec, iteration, kv_capacity_tokens=110_000, phase="decode")
    # the KV cache holds 100 requests of 1,100 tokens (fewer than max_running): 100 sequences at context 1,050,
    # one token each an iteration, a request finishing every 100 tokens
    seconds = 0.004 + 0.00005 * 100 + 1e-8 * 100 * 1050
    assert capacity.sequences == 100
    assert capacity.requests_per_s == pytest.approx(100 / 100 / seconds)


@pytest.mark.parametrize(
    "phase,settings",
    [
        ("both", {"token_budget": 2048, "max_running": 64}),  # the running limit binds
        ("both", {"token_budget": 2048, "max_running": 256}),  # the prompts' share of the budget binds
        ("decode", {"token_budget": 8192, "max_running": 128}),
        ("prefill", {"token_budget": 4096, "max_running": 256}),
        ("both", {"token_budget": 2048, "input_tokens": {"min": 200, "max": 1800}, "output_tokens": [50, 150, 400]}),
        ("both", {"token_budget": 4096, "speculative_tokens": 1, "acceptance_rate": 0.8, "prefix_cache_hit_rate": 0.5}),
    ],
)
def test_the_capacity_is_what_the_engine_serves_when_its_queue_never_empties(phase: str, settings: Any) -> None:
    lengths = {"input_tokens": 1000, "output_tokens": 100, **settings}
    spec = ServingSpec(**lengths, arrival="closed", concurrency=4000, num_requests=3000)
    capacity = pool_capacity(spec, iteration, 10**6, phase)
    finished = sorted(request.finish_s for request in run_engine(spec, iteration, 10**6, 1, 0, phase).requests)
    first, last = len(finished) // 5, 4 * len(finished) // 5  # the steady middle, not the filling or the draining
    served = (last - first) / (finished[last] - finished[first])
    assert served == pytest.approx(capacity.requests_per_s, rel=0.03)


def test_below_its_capacity_the_queue_stays_bounded_and_above_it_grows() -> None:
    settings = {"input_tokens": 1000, "output_tokens": 100, "token_budget": 2048, "max_running": 64}
    capacity = pool_capacity(ServingSpec(**settings), iteration, 10**6)

    def waits(load: float) -> tuple[float, float]:
        rate = load * capacity.requests_per_s
        spec = ServingSpec(**settings, arrival="poisson", request_rate=rate, num_requests=2000)
        requests = sorted(run_engine(spec, iteration, 10**6, 1).requests, key=lambda r: r.arrival_s)
        ttft = [r.first_token_s - r.arrival_s for r in requests]
        return sum(ttft[400:800]) / 400, sum(ttft[-400:]) / 400  # early and late in the run

    early, late = waits(0.8)
    assert late < 2 * early  # stationary: the last requests wait about as long as the earlier ones
    early, late = waits(1.1)
    assert late > 3 * early  # 10% more than the capacity: the queue, and the wait, grow all run long


def test_an_open_stream_that_keeps_up_is_served_at_its_offered_rate() -> None:
    """What arrives is served: with the load below 100% the throughput is the offered rate, not the run's tokens
    over its length (which the filling and the draining of a finite run would understate), and above 100% the
    pool's capacity."""
    from moesim.scenario import scenario_from_dict
    from moesim.serving import simulate_serving

    document = {
        "model": {"preset": "olmoe-1b-7b", "num_layers": 4},
        "cluster": {"num_nodes": 1, "gpus_per_node": 8},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "inference"},
        "serving": {"input_tokens": {"min": 512, "max": 1536}, "output_tokens": [32, 96], "num_requests": 160},
    }
    light = simulate_serving(scenario_from_dict(document, ["serving.arrival=poisson", "serving.request_rate=40"]))
    assert light.load is not None and light.load < 1
    assert light.requests_per_s == pytest.approx(40) and light.output_tokens_per_s == pytest.approx(40 * 64)
    assert light.input_tokens_per_s == pytest.approx(40 * 1024)
    assert any(
        note.startswith("ranks: the 8 attention ranks of an EP group are taken as alike") for note in light.notes
    )
    heavy = simulate_serving(scenario_from_dict(document, ["serving.arrival=poisson", "serving.request_rate=1e6"]))
    assert heavy.load > 1 and heavy.requests_per_s == pytest.approx(1e6 / heavy.load)
    closed = simulate_serving(scenario_from_dict(document))
    assert closed.load is None and closed.output_tokens_per_s > 0  # measured over the run


@pytest.mark.parametrize("generations", [4, 16])
def test_a_closed_loop_is_measured_while_it_holds_its_concurrency(generations: int) -> None:
    """A closed loop at the engine's largest batch serves its capacity: measured over the requests served while
    the loop was full (Little's law; output lengths differ, so they finish at different times), a run four times
    longer gives the same; a run of one concurrency's worth never holds it."""
    from moesim.serving.throughput import closed_loop_steady

    settings = {"input_tokens": 1000, "output_tokens": [50, 100, 150], "token_budget": 2048, "max_running": 64}
    capacity = pool_capacity(ServingSpec(**settings), iteration, 10**6)
    spec = ServingSpec(**settings, arrival="closed", concurrency=64, num_requests=64 * generations)
    run = run_engine(spec, iteration, 10**6, 1)
    steady, served = closed_loop_steady(run.requests, 1, 64)
    assert served is not None and len(steady) >= 64 * (generations - 3)
    assert served.requests_per_s == pytest.approx(capacity.requests_per_s, rel=0.03)
    short = run_engine(spec.model_copy(update={"num_requests": 64}), iteration, 10**6, 1)
    assert closed_loop_steady(short.requests, 1, 64) == ([], None)  # one generation: never held it


def test_mixtral_on_one_node_serves_its_capacity_when_every_slot_is_full() -> None:
    """The same on the simulator's own iteration times: Mixtral 8x7B on 8 H100 (EP 8), 256 sequences an engine
    held full by a closed loop, serves what the capacity says (measured: 3,211 against 3,178 tokens/s a GPU)."""
    from pathlib import Path

    from moesim.scenario import load_scenario, scenario_from_dict
    from moesim.serving import simulate_serving
    from moesim.serving.iteration import IterationCost

    path = Path(__file__).resolve().parent.parent / "scenarios" / "mixtral-8x7b-serving.yaml"
    scenario = scenario_from_dict(
        load_scenario(path).model_dump(mode="json"),
        ["serving.arrival=closed", "serving.concurrency=2048", "serving.num_requests=8192"],
    )
    cost = IterationCost(scenario)
    capacity = pool_capacity(scenario.serving, cost.seconds, cost.kv_capacity_tokens())
    served = simulate_serving(scenario, cost)
    assert capacity.sequences == scenario.serving.max_running == 256
    assert served.requests_per_s / 8 == pytest.approx(capacity.requests_per_s, rel=0.03)
