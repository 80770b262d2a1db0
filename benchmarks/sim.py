"""Simulator speed, measured side by side in one run (not part of the test suite).

    .venv/bin/python benchmarks/sim.py            # DeepSeek-V3 at 64..2048 GPUs and a 100-point sweep
    .venv/bin/python benchmarks/sim.py --no-sweep

1. One training step of DeepSeek-V3 (its preset: top-8 of 256 experts, EP 64, DeepEP
   all-to-all on H800 nodes) at 64, 256, 1024 and 2048 GPUs, fast and full mode. PP grows
   with the cluster (GPUs / 128 stages) so EP 64 and DP 128 stay fixed, with 8 micro-batches
   per step on the 1F1B schedule (DualPipe, the scenario's own, needs an even pp of at least 2
   and twice pp micro-batches); memory checks are off (64 GPUs cannot hold the model). Prints the wall time of
   each, and the growth from 256 to 2048 GPUs (target: at most 8x, the growth in GPUs) and
   the 1024-GPU times (targets: at most 1 s fast, 30 s full, on a 2-core machine).
2. A 100-point sweep of the Mixtral 8x7B serving scenario (capacity factor x skew x routing
   rule), full mode: with 2 local workers and in one process, side by side, the same rows
   (target: at most 60 s on 2 cores with 2 workers).
3. `plan`'s fast search over the full OLMoE-1B-7B (every layout up to 64 H100/A100):
   layouts per second with the simulator's reuse of work between layouts (routing per EP
   group, stage programs per data-parallel size) and without it, side by side, and whether
   every layout's figures are identical (target: at least 100 layouts/s on 2 cores). Both
   runs reuse alike layers within a stage and play the fast pipeline with clocks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moesim import load_scenario, simulate
from moesim.planning.prices import DEFAULT_PRICE_PER_GPU_HOUR
from moesim.planning.store import ResultsStore
from moesim.planning.sweep import run_sweep
from moesim.planning.training import _evaluate, candidates
from moesim.scenario import apply_overrides, read_document, scenario_from_dict
from moesim.sim import routing_load, stages

REPO = Path(__file__).resolve().parent.parent


def deepseek(gpus: int, mode: str) -> float:
    pipeline = max(1, gpus // 128)
    data_parallel = gpus // pipeline
    scenario = load_scenario(
        REPO / "scenarios" / "deepseek-v3-pretraining.yaml",
        [
            f"cluster.num_nodes={gpus // 8}",
            f"parallelism.pp_size={pipeline}",
            "parallelism.pipeline_schedule=1f1b",  # DualPipe needs an even pp >= 2 and 2 x pp micro-batches
            f"simulation.network_mode={mode}",
            f"workload.global_batch_size={8 * data_parallel}",
        ],
    )
    stages._stage_cache.clear()  # a cold simulation: nothing reused from the previous size
    routing_load._routing_cache.clear()
    started = time.perf_counter()
    result = simulate(scenario, check_memory=False)
    elapsed = time.perf_counter() - started
    print(
        f"  {gpus:5d} GPUs  {mode:4s}  wall {elapsed:6.2f} s   simulated step {result.step_time_s:7.3f} s, "
        f"{result.tokens_per_s_per_gpu:7.0f} tokens/s/GPU, MFU {result.mfu:.1%}"
    )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--only-plan", action="store_true", help="just the plan's fast search (part 3)")
    args = parser.parse_args()
    if args.only_plan:
        plan_search()
        return
    print("DeepSeek-V3 training step (EP 64, DP 128, PP = GPUs / 128)")
    times = {(gpus, mode): deepseek(gpus, mode) for mode in ("fast", "full") for gpus in (64, 256, 1024, 2048)}
    for mode in ("fast", "full"):
        growth = times[(2048, mode)] / times[(256, mode)]
        print(
            f"  {mode}: 256 -> 2048 GPUs wall-time growth {growth:.2f}x (GPUs grew 8x); 1024 GPUs in "
            f"{times[(1024, mode)]:.2f} s"
        )
    if args.no_sweep:
        return
    sweep_side_by_side()
    plan_search()


def sweep_side_by_side() -> None:
    document = apply_overrides(read_document(REPO / "scenarios" / "mixtral-8x7b-serving.yaml"), [])
    params = {
        "routing.capacity_factor": [None, 1.0, 1.25, 1.5, 2.0],
        "workload.expert_popularity_skew": [0.0, 0.25, 0.5, 1.0],
        "routing.strategy": ["top_k", "expert_choice", "hash", "sinkhorn", "group_limited"],
    }
    rows, walls = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for workers in (2, 1):
            store = Path(folder) / f"bench{workers}.sqlite"
            started = time.perf_counter()
            summary = run_sweep(document, params, store, workers=workers)
            walls[workers] = time.perf_counter() - started
            with ResultsStore(store) as results:
                rows[workers] = sorted(
                    (tuple(sorted((k, v) for k, v in row.items() if k != "sim_seconds")) for row in results.rows()),
                    key=str,
                )
            print(
                f"Mixtral 8x7B serving sweep, full mode: {summary.ran} points, {summary.errors} errors, "
                f"{workers} worker(s): {walls[workers]:.1f} s wall"
            )
    print(
        f"  2 workers / 1 process: {walls[2] / walls[1]:.2f}x the time; same rows: {rows[1] == rows[2]}; "
        f"target at most 60 s with 2 workers: {'met' if walls[2] <= 60 else 'MISSED'}"
    )


def plan_search() -> None:
    document = {
        "model": "olmoe-1b-7b",
        "cluster": {"preset": "dgx-h100", "num_nodes": 1},
        "parallelism": {"ep_size": 8},
        "routing": {"capacity_factor": 1.25},
        "workload": {
            "mode": "training",
            "micro_batch_size": 1,
            "seq_len": 2048,
            "global_batch_size": 64,
            "expert_popularity_skew": 0.5,
        },
    }
    pool = list(candidates(scenario_from_dict(document), ["H100-SXM", "A100-80GB"], 64, ["top_k"], [1.25]))
    figures, rates = {}, {}
    for label, stage_size, routing_size in (
        ("without reuse", 0, 0),
        ("with reuse", stages.STAGE_CACHE_SIZE, routing_load.ROUTING_CACHE_SIZE),
    ):
        stages.STAGE_CACHE_SIZE, routing_load.ROUTING_CACHE_SIZE = stage_size, routing_size
        stages._stage_cache.clear()
        routing_load._routing_cache.clear()
        started = time.perf_counter()
        figures[label] = [_evaluate(document, candidate, "fast", DEFAULT_PRICE_PER_GPU_HOUR) for candidate in pool]
        rates[label] = len(pool) / (time.perf_counter() - started)
        print(f"plan fast search, OLMoE-1B-7B, {len(pool)} layouts {label}: {rates[label]:.1f} layouts/s")
    print(
        f"  reuse speeds it up {rates['with reuse'] / rates['without reuse']:.2f}x; identical figures: "
        f"{figures['with reuse'] == figures['without reuse']}; target at least 100 layouts/s: "
        f"{'met' if rates['with reuse'] >= 100 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
