"""What the simulator reuses between scenarios (routing per EP group, stage programs per data-parallel size,
alike layers within a stage) changes no figure: a planned layout simulates the same whether or not its
neighbours ran first."""

from __future__ import annotations

import json
import random

import pytest

from moesim.scenario import scenario_from_dict
from moesim.sim import routing_load, stages
from moesim.sim.step import simulate
from moesim.sim.timeline.clocks import run_pipeline_fast
from moesim.sim.timeline.simpy_engine import run_pipeline

OLMOE = {
    "model": {"preset": "olmoe-1b-7b", "num_layers": 4},
    "cluster": {"num_nodes": 1, "gpus_per_node": 8},
    "parallelism": {"ep_size": 8},
    "workload": {
        "mode": "training",
        "micro_batch_size": 1,
        "seq_len": 2048,
        "global_batch_size": 32,
        "expert_popularity_skew": 0.5,
    },
}


def _figures(nodes: int, mode: str, pp: int = 1) -> str:
    document = {
        **OLMOE,
        "cluster": {**OLMOE["cluster"], "num_nodes": nodes},
        "parallelism": {"ep_size": 8, "pp_size": pp},
        "simulation": {"network_mode": mode},
    }
    result = simulate(scenario_from_dict(document)).as_dict()
    result.pop("slices", None)
    return json.dumps(result, sort_keys=True, default=str)


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_reused_work_gives_the_same_figures(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stages._stage_cache.clear()
    routing_load._routing_cache.clear()
    warm = [_figures(1, mode), _figures(2, mode), _figures(4, mode, pp=2), _figures(2, mode)]  # reuses the first runs
    monkeypatch.setattr(stages, "STAGE_CACHE_SIZE", 0)
    monkeypatch.setattr(routing_load, "ROUTING_CACHE_SIZE", 0)
    stages._stage_cache.clear()
    routing_load._routing_cache.clear()
    cold = [_figures(2, mode), _figures(4, mode, pp=2), _figures(1, mode)]
    assert cold == [warm[1], warm[2], warm[0]] and warm[3] == warm[1]
    assert not stages._stage_cache and not routing_load._routing_cache  # size 0 keeps nothing
    assert json.loads(warm[0])["step_time_s"] != json.loads(warm[1])["step_time_s"]  # the layouts do differ


def test_fast_pipeline_plays_the_simpy_schedule_exactly() -> None:
    rng = random.Random(1)
    for _ in range(200):
        stages = rng.choice([1, 2, 3, 4, 8])
        chunks = rng.choice([1, 2, 3]) if stages > 1 else 1
        micro = stages * rng.randint(1, 4)
        forward = [rng.uniform(0.1, 1.0) for _ in range(stages)]
        backward = [rng.uniform(0.1, 2.0) for _ in range(stages)]
        p2p = rng.choice([0.0, 0.01, 0.3])
        assert (
            run_pipeline_fast(forward, backward, micro, p2p, chunks)
            == run_pipeline(forward, backward, micro, p2p, chunks)[0]
        )


def test_settings_that_only_price_the_routed_tokens_share_one_routing() -> None:
    """The all-to-all algorithm, kernels and overlap settings change what the routed tokens cost, not where they
    go: a deployment's DeepEP normal and low-latency passes share one routing; a routing setting does not."""
    from moesim.sim.routing_load import NOT_ROUTING_SETTINGS, routing_cache_key

    base = scenario_from_dict(OLMOE)
    key = routing_cache_key(base, [0, 1], 2048, 8)
    changed = {
        "alltoall_algorithm": "deepep_low_latency",
        "moe_kernels": "fused",
        "allreduce_algorithm": "ring",
        "overlap_shared_experts": False,
        "overlap_grad_reduce": False,
        "alltoall_overlap": "1f1b",
        "comm_sms": 20,
        "moe_chunks": 2,
        "cost_profile": "H100-SXM",
    }
    assert set(changed) == set(NOT_ROUTING_SETTINGS)
    pricing = scenario_from_dict({**OLMOE, "simulation": changed})
    assert routing_cache_key(pricing, [0, 1], 2048, 8) == key
    for routing in ({"redundant_experts": 8}, {"max_routed_tokens": 1024}, {"network_mode": "fast"}):
        assert routing_cache_key(scenario_from_dict({**OLMOE, "simulation": routing}), [0, 1], 2048, 8) != key
