"""The Pareto front both planners show: the options no other beats on both of two figures."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

Option = TypeVar("Option")


def pareto_front(
    options: Sequence[Option], key: Callable[[Option], tuple[float, float]], gain: float = 0.0
) -> list[Option]:
    """The options no other beats on both figures of `key(option)` = (first, second), both the lower the better.

    Sorted by (first, second), an option enters the front only when its second figure is below the last entry's by
    more than `gain` (a share of it; `gain` > 0 takes a positive second figure): smaller gains are below a
    simulator's resolution.
    """
    front: list[Option] = []
    for option in sorted(options, key=key):
        if not front or key(option)[1] < key(front[-1])[1] * (1 - gain):
            front.append(option)
    return front
