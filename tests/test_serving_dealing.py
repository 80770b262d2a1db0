"""A closed loop's requests dealt to the engines: the remainder goes to some of them, engines in one EP group keep
each other's pace, independent replicas do not, and every engine's percentiles are over a hundred requests."""

from __future__ import annotations

import pytest

from moesim.scenario import scenario_from_dict
from moesim.scenario.serving import ServingSpec
from moesim.serving import simulate_serving
from moesim.serving.dealing import MIN_COUNTED, deal, engine_requests


def _deployment(ep: int, concurrency: int, requests: int = 64) -> dict:
    """Mixtral (4 layers) on 8 H100 with data-parallel attention: 8 engines, in one EP group (ep 8, lockstep)
    or as 8 replicas each holding every expert (ep 1)."""
    return {
        "model": {"preset": "mixtral-8x7b", "num_layers": 4},
        "cluster": {"num_nodes": 1, "gpu": "H200"},
        "parallelism": {"ep_size": ep},
        "workload": {"mode": "inference"},
        "simulation": {"network_mode": "fast", "moe_kernels": "fused"},
        "serving": {
            "input_tokens": 256,
            "output_tokens": 32,
            "arrival": "closed",
            "concurrency": concurrency,
            "num_requests": requests,
        },
    }


def test_the_remainder_is_dealt() -> None:
    assert deal(15, 8).most == 2 and deal(15, 8).busier == 7 and deal(15, 8).lighter == 1
    assert deal(3, 8).most == 1 and deal(3, 8).lighter == 0 and not deal(3, 8).even
    assert deal(16, 8).even and deal(16, 8).most == 2


def test_concurrency_below_and_between_the_engines_is_its_own_load() -> None:
    """8 engines in lockstep: concurrency 1, 8 and 15 serve three different throughputs (before, 1 and 8 both
    simulated one request an engine and printed the same tokens/s)."""
    served = [simulate_serving(scenario_from_dict(_deployment(8, c))).output_tokens_per_s for c in (1, 8, 15)]
    assert served[0] < served[1] < served[2]
    assert served[0] == pytest.approx(served[1] / 8, rel=0.02)  # one request at an 8-request pace: 1/8 of it


def test_independent_replicas_add_their_busier_and_lighter_engines() -> None:
    """8 replicas (EP 1): at 12 requests, 4 engines hold 2 and 4 hold 1: half of what 16 serve plus half of 8's."""
    twelve, sixteen, eight = (
        simulate_serving(scenario_from_dict(_deployment(1, c))).output_tokens_per_s for c in (12, 16, 8)
    )
    assert twelve == pytest.approx((sixteen + eight) / 2, rel=1e-9)


def test_percentiles_are_over_a_hundred_requests_an_engine() -> None:
    result = simulate_serving(scenario_from_dict(_deployment(8, 8, requests=24)))
    assert len(result.tpot_samples_s) >= MIN_COUNTED
    assert any("num_requests raised" in note for note in result.notes)


def test_a_batch_is_served_as_it_is() -> None:
    spec = ServingSpec(arrival="closed", concurrency=64, num_requests=64)
    assert engine_requests(spec, 8, 8) == 8


def test_a_benchmark_measurement_counts_every_request_from_a_simultaneous_start() -> None:
    """`serving.measure: benchmark`: the first wave's prompts queue behind each other and are counted, as serving
    benchmark clients count them; the steady measurement leaves them out. Same run, TTFT longer; every request
    counted. Prompts of 4,096 tokens: an engine's eight first prompts (32K tokens) exceed one iteration's token
    budget, so they queue (with 256-token prompts all eight fit one iteration and nothing queues)."""
    base = _deployment(8, 64, requests=640)
    base["serving"]["input_tokens"] = 4096
    steady = scenario_from_dict(base)
    benchmark = scenario_from_dict({**base, "serving": {**base["serving"], "measure": "benchmark"}})
    first, second = simulate_serving(steady), simulate_serving(benchmark)
    assert len(second.ttft_samples_s) == 640 // 8  # every request of an engine
    mean_steady = sum(first.ttft_samples_s) / len(first.ttft_samples_s)
    mean_benchmark = sum(second.ttft_samples_s) / len(second.ttft_samples_s)
    assert mean_benchmark > 1.2 * mean_steady  # the first wave's queueing, not rounding
    assert second.ttft_s[99] > 1.5 * first.ttft_s[99]
    assert any("measured as a benchmark client does" in note for note in second.notes)
