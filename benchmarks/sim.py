"""Simulator speed, measured side by side in one run (not part of the test suite).

    .venv/bin/python benchmarks/sim.py            # DeepSeek-V3 at 64..2048 GPUs and a 100-point sweep
    .venv/bin/python benchmarks/sim.py --no-sweep

1. One training step of DeepSeek-V3 (its preset: top-8 of 256 experts, EP 64, DeepEP
   all-to-all on H800 nodes) at 64, 256, 1024 and 2048 GPUs, fast and full mode. PP grows
   with the cluster (GPUs / 128 stages) so EP 64 and DP 128 stay fixed, with 8 micro-batches
   per step; memory checks are off (64 GPUs cannot hold the model). Prints the wall time of
   each, and the growth from 256 to 2048 GPUs (target: at most 8x, the growth in GPUs) and
   the 1024-GPU times (targets: at most 1 s fast, 30 s full, on a 2-core machine).
2. A 100-point sweep of the Mixtral 8x7B serving scenario (capacity factor x skew x routing
   rule) with 2 local workers: its wall time (target: minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moesim import load_scenario, simulate
from moesim.planning.sweep import run_sweep
from moesim.scenario import apply_overrides, read_document

REPO = Path(__file__).resolve().parent.parent


def deepseek(gpus: int, mode: str) -> float:
    stages = max(1, gpus // 128)
    data_parallel = gpus // stages
    scenario = load_scenario(
        REPO / "scenarios" / "deepseek-v3-pretraining.yaml",
        [f"cluster.num_nodes={gpus // 8}", f"parallelism.pp_size={stages}", f"simulation.network_mode={mode}",
         f"workload.global_batch_size={8 * data_parallel}"],
    )
    started = time.perf_counter()
    result = simulate(scenario, check_memory=False)
    elapsed = time.perf_counter() - started
    print(f"  {gpus:5d} GPUs  {mode:4s}  wall {elapsed:6.2f} s   simulated step {result.step_time_s:7.3f} s, "
          f"{result.tokens_per_s_per_gpu:7.0f} tokens/s/GPU, MFU {result.mfu:.1%}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    print("DeepSeek-V3 training step (EP 64, DP 128, PP = GPUs / 128)")
    times = {(gpus, mode): deepseek(gpus, mode) for mode in ("fast", "full") for gpus in (64, 256, 1024, 2048)}
    for mode in ("fast", "full"):
        growth = times[(2048, mode)] / times[(256, mode)]
        print(f"  {mode}: 256 -> 2048 GPUs wall-time growth {growth:.2f}x (GPUs grew 8x); 1024 GPUs in {times[(1024, mode)]:.2f} s")
    if args.no_sweep:
        return
    document = apply_overrides(read_document(REPO / "scenarios" / "mixtral-8x7b-serving.yaml"), [])
    params = {
        "routing.capacity_factor": [None, 1.0, 1.25, 1.5, 2.0],
        "workload.expert_popularity_skew": [0.0, 0.25, 0.5, 1.0],
        "routing.strategy": ["top_k", "expert_choice", "hash", "sinkhorn", "group_limited"],
    }
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = run_sweep(document, params, Path(folder) / "bench.sqlite", workers=2)
        elapsed = time.perf_counter() - started
    print(f"Mixtral 8x7B serving sweep: {summary.ran} points, {summary.errors} errors, 2 workers: {elapsed:.1f} s wall")


if __name__ == "__main__":
    main()
