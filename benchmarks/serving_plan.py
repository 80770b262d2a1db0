"""`plan --serve` speed, measured side by side in one run (not part of the test suite).

    .venv/bin/python benchmarks/serving_plan.py                 # DeepSeek-V3 on up to 64 H800 (about 6 min)
    .venv/bin/python benchmarks/serving_plan.py --max-gpus 32

Every layout the serving planner tries for DeepSeek-V3 (its serving scenario, 220 requests/s, H800) served
twice: each layout building its own iteration times and warming its routers' biases up afresh, as the planner
did before it shared them, and through `SharedIterationCosts` with the warm-ups kept, as it does now. Prints
the layouts a second of each, their ratio (target: at least 3x) and whether every layout's figures are
identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moesim.errors import MoesimError
from moesim.planning.serving import SharedIterationCosts, _overrides, serving_layouts
from moesim.scenario import load_scenario, scenario_from_dict
from moesim.serving import simulate_serving
from moesim.sim import scenario_routing

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-gpus", type=int, default=64)
    args = parser.parse_args()
    base = load_scenario(REPO / "scenarios" / "deepseek-v3-serving-h800.yaml")
    document = base.model_dump(mode="json")
    layouts = list(serving_layouts(base, ["H800"], args.max_gpus))
    scenarios = [scenario_from_dict(document, _overrides(layout, 220.0, 2.0, 16384, 256)) for layout in layouts]
    shared = SharedIterationCosts()

    figures, walls = {}, {}
    kept = scenario_routing.WARMED_BIASES
    for label, serve, warmed in (
        ("each layout alone", simulate_serving, 0),
        ("shared iteration times", shared.serve, kept),
    ):
        scenario_routing.WARMED_BIASES = warmed  # 0: every warm-up runs again
        scenario_routing._warmed_biases.clear()
        started = time.perf_counter()
        results = []
        for scenario in scenarios:
            try:
                results.append(serve(scenario).as_dict())
            except MoesimError as error:  # does not fit: the planner skips it the same way
                results.append(str(error))
        walls[label] = time.perf_counter() - started
        figures[label] = results
        served = sum(not isinstance(result, str) for result in results)
        print(
            f"DeepSeek-V3 serving, {len(layouts)} layouts on up to {args.max_gpus} H800 ({served} fit), {label}: "
            f"{walls[label]:.1f} s, {len(layouts) / walls[label]:.2f} layouts/s"
        )
    ratio = walls["each layout alone"] / walls["shared iteration times"]
    same = figures["each layout alone"] == figures["shared iteration times"]
    print(
        f"  sharing speeds it up {ratio:.1f}x; identical figures: {same}; target at least 3x: "
        f"{'met' if ratio >= 3 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
