"""moesim: simulation-driven routing and systems planner for Mixture-of-Experts models.

Python API::

    from moesim import load_scenario, simulate
    scenario = load_scenario("scenarios/mixtral-8x7b-serving.yaml", overrides=["routing.top_k=1"])
    result = simulate(scenario)          # StepResult: step time, phases, MFU, drops, memory
"""

from typing import Any

from moesim.errors import MoesimError, ScenarioError
from moesim.scenario import Scenario, load_scenario, scenario_from_dict

__version__ = "0.1.0"


def simulate(scenario: Scenario, check_memory: bool = True) -> Any:
    """Simulate one step of a scenario; returns a `moesim.sim.step.StepResult`."""
    # torch on first use: `import moesim` (scenarios, presets) stays light
    from moesim.sim.step import simulate as _simulate

    return _simulate(scenario, check_memory)


def sweep(document: dict[str, Any], **options: Any) -> Any:
    """Run a sweep of a scenario document; see `moesim.planning.sweep.run_sweep`."""
    from moesim.planning.sweep import run_sweep  # torch on first use, as above

    return run_sweep(document, **options)


def plan(document: dict[str, Any], target_tokens_per_s: float, **options: Any) -> Any:
    """Cheapest cluster and parallelism meeting a throughput target; see `moesim.planning.training.plan`."""
    from moesim.planning.training import plan as _plan  # torch on first use, as above

    return _plan(document, target_tokens_per_s, **options)


__all__ = [
    "Scenario",
    "load_scenario",
    "scenario_from_dict",
    "simulate",
    "sweep",
    "plan",
    "MoesimError",
    "ScenarioError",
    "__version__",
]
