"""Sweep points: the cartesian product of parameter values, each point a list of overrides."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from moesim.errors import ScenarioError
from moesim.scenario import parse_override, path_problem


@dataclass(frozen=True)
class Point:
    """One sweep point: a value for every swept path."""

    values: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """A canonical text key (the results store's identity of the point)."""
        return json.dumps(dict(self.values), sort_keys=True, default=str)

    @property
    def overrides(self) -> list[str]:
        """The point as `--set` overrides (values as JSON, which YAML reads back)."""
        return [f"{path}={json.dumps(value)}" for path, value in self.values]


def parse_param(text: str) -> tuple[str, list[Any]]:
    """`routing.capacity_factor=1.0,1.25,2.0` -> ("routing.capacity_factor", [1.0, 1.25, 2.0])."""
    path, value = parse_override(text, "--param")
    dotted = ".".join(path)
    if isinstance(value, str):
        values = [parse_override(f"x={item}")[1] for item in value.split(",")]
    elif isinstance(value, list):
        values = value
    else:
        values = [value]
    if not values or values == [""]:
        raise ScenarioError(f"--param '{text}': list at least one value, e.g. {dotted}=1,2")
    return dotted, values


def grid(params: Mapping[str, Sequence[Any]]) -> list[Point]:
    """Every combination of the values, in a stable order (the first parameter varies slowest)."""
    for path in params:
        problem = path_problem(path.split("."))
        if problem:
            raise ScenarioError(f"sweep parameter '{path}': {problem}")
    names = list(params)
    return [Point(tuple(zip(names, combination))) for combination in itertools.product(*(params[n] for n in names))]
