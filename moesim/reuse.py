"""Work the simulator keeps to reuse: a bounded, least-recently-used cache of computed results by key."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, TypeVar

Value = TypeVar("Value")


def reuse(cache: "OrderedDict[str, Value]", key: str, size: int, compute: Callable[[], Value]) -> Value:
    """`cache[key]`, or `compute()` kept under `key`; beyond `size` entries the least recently used go (size 0
    keeps nothing). Callers treat the value as read-only: it is shared."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute()
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
    return value
