"""`Scenario`: the whole input of a moesim run, and how it is loaded.

A scenario file (YAML, TOML or JSON) has six sections: `model`, `cluster`,
`parallelism`, `workload`, `routing` and `sweep`. Loading fills every default (the
routing rule inherits `top_k` and the score function from the model, the cluster's
links inherit the GPU preset's bandwidths) and checks everything that can be checked
before a run, so a scenario that loads is a scenario that runs.
"""

from moesim.scenario.document import MAX_WORLD_SIZE, Scenario
from moesim.scenario.loading import (
    apply_overrides,
    load_scenario,
    parse_override,
    path_problem,
    read_document,
    scenario_from_dict,
    scenario_json_schema,
)
from moesim.scenario.sections import (
    ClusterSpec,
    ParallelismSpec,
    RoutingSpec,
    SweepSpec,
    WorkloadSpec,
)
from moesim.scenario.serving import ServingSpec
from moesim.scenario.simulation_options import SimulationSpec

__all__ = [
    "MAX_WORLD_SIZE",
    "ClusterSpec",
    "ParallelismSpec",
    "RoutingSpec",
    "Scenario",
    "ServingSpec",
    "SimulationSpec",
    "SweepSpec",
    "WorkloadSpec",
    "apply_overrides",
    "load_scenario",
    "parse_override",
    "path_problem",
    "read_document",
    "scenario_from_dict",
    "scenario_json_schema",
]
