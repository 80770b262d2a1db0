"""moesim: simulation-driven routing and systems planner for Mixture-of-Experts models.

Python API::

    from moesim import load_scenario
    scenario = load_scenario("scenarios/mixtral-8x7b-serving.yaml", overrides=["routing.top_k=1"])
"""

from moesim.errors import MoesimError, ScenarioError
from moesim.scenario import Scenario, load_scenario, scenario_from_dict

__version__ = "0.1.0"

__all__ = ["Scenario", "load_scenario", "scenario_from_dict", "MoesimError", "ScenarioError", "__version__"]
