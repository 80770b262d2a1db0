"""A serving deployment's pools: one pool doing both phases, or a disaggregated prefill pool and decode pool,
each with its engines (attention ranks), their iteration times and the KV cache an engine holds; and the load a
request rate puts on the busier pool, which a planner reads before it serves anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moesim.errors import MoesimError
from moesim.scenario import Scenario, scenario_from_dict
from moesim.scenario.serving import most_tokens
from moesim.serving.iteration import IterationCost
from moesim.serving.throughput import pool_load


def kv_capacity_for(cost: IterationCost, need: int) -> int:
    """The KV cache tokens an engine holds, if it holds a request of `need` tokens (else an error)."""
    capacity = cost.kv_capacity_tokens()
    if capacity < need:
        raise MoesimError(
            f"serving: a request of up to {need:,} tokens needs more KV cache than an attention rank holds "
            f"({capacity:,} tokens after weights and buffers); shorten the requests or add GPUs per rank"
        )
    return capacity


def prefill_pool_scenario(scenario: Scenario) -> Scenario:
    """The disaggregated prefill pool as a scenario of its own: its nodes, EP (default: the scenario's, at most the
    pool's GPUs), TP and expert TP (default: the scenario's), serving the same requests."""
    pool = scenario.serving.prefill_pool
    if pool is None:
        raise MoesimError("serving.prefill_pool: this scenario has no prefill pool")
    pool_gpus = pool.num_nodes * scenario.cluster.gpus_per_node
    default_ep = min(scenario.parallelism.ep_size, pool_gpus // pool.tp_size)
    return scenario_from_dict(
        scenario.model_dump(mode="json"),
        [
            f"cluster.num_nodes={pool.num_nodes}",
            f"parallelism.ep_size={pool.ep_size or default_ep}",
            f"parallelism.tp_size={pool.tp_size}",
            f"parallelism.expert_tp_size={pool.expert_tp_size or scenario.parallelism.expert_tp_size}",
            "parallelism.dp_size=null",
            "workload.global_batch_size=null",
            "serving.prefill_pool=null",
        ],
    )


@dataclass(frozen=True)
class Pool:
    """One pool of a deployment: its scenario, what its engines do ("both", "prefill" or "decode"), how many
    engines it has, their iteration times and the KV cache an engine holds."""

    scenario: Scenario
    phase: str
    ranks: int
    cost: IterationCost
    kv_capacity: int


def pool_scenarios(scenario: Scenario) -> list[tuple[Scenario, str]]:
    """Each pool of the deployment as a scenario of its own, with what its engines do: the scenario itself doing
    "both", or its "prefill" pool and its "decode" pool (the scenario's cluster)."""
    if scenario.serving.prefill_pool is None:
        return [(scenario, "both")]
    decode = scenario_from_dict(scenario.model_dump(mode="json"), ["serving.prefill_pool=null"])
    return [(prefill_pool_scenario(scenario), "prefill"), (decode, "decode")]


def deployment_pools(
    scenario: Scenario, cost: Optional[IterationCost], prefill_cost: Optional[IterationCost]
) -> list[Pool]:
    """The deployment's pools (`pool_scenarios`) with their engines (`cost`: the one pool's or the decode pool's
    iteration times where already built, `prefill_cost` the prefill pool's)."""
    spec = scenario.serving
    if scenario.workload.mode != "inference":
        raise MoesimError("workload.mode: `moesim serve` serves an inference deployment; set workload.mode=inference")
    whole = most_tokens(spec.input_tokens) + most_tokens(spec.output_tokens)
    needs = {"both": whole, "decode": whole, "prefill": most_tokens(spec.input_tokens)}
    pools = []
    for pool_scenario, phase in pool_scenarios(scenario):
        need, built = needs[phase], prefill_cost if phase == "prefill" else cost
        par = pool_scenario.parallelism
        ranks = pool_scenario.cluster.world_size // (par.tp_size * par.cp_size)  # with pipeline stages: x stages
        built = built or IterationCost(pool_scenario)
        pools.append(Pool(pool_scenario, phase, ranks, built, kv_capacity_for(built, need)))
    return pools


def deployment_load(
    scenario: Scenario, cost: Optional[IterationCost] = None, prefill_cost: Optional[IterationCost] = None
) -> Optional[float]:
    """The load `simulate_serving` reports (the busier pool's), without serving the requests: a planner skips
    the engines of a deployment that cannot keep up."""
    loads = [
        pool_load(scenario.serving, pool.cost, pool.kv_capacity, pool.ranks, pool.phase)[0]
        for pool in deployment_pools(scenario, cost, prefill_cost)
    ]
    return None if None in loads else max(loads)  # type: ignore[type-var]
