"""Dotted paths into a scenario (`routing.capacity_factor`): which pydantic section a field holds, and why a path
names no field, with the nearest key; shared by the loader (overrides, unknown keys) and the sweep's grid."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from pydantic import BaseModel

from moesim.cluster.hardware import GpuSpec
from moesim.models.spec import ModelSpec
from moesim.scenario.sections import ClusterSpec


def section_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `Optional[X]`), if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_path_problem(path: Sequence[Any], root: type[BaseModel]) -> str | None:
    """Why a dotted scenario path does not name a field, or None if it does."""
    cls: type[BaseModel] | None = root
    for depth, part in enumerate(path):
        if cls is None:
            return None  # inside a free-form mapping (routing.options): anything goes
        if part == "preset" and cls in (ModelSpec, GpuSpec, ClusterSpec) or part == "hf_config" and cls is ModelSpec:
            continue
        if part not in cls.model_fields:
            where = ".".join(str(p) for p in path[:depth]) or "the top level"
            return _nearest_key_message(str(part), list(cls.model_fields), where)
        annotation = cls.model_fields[part].annotation
        nested = section_class(annotation)
        if nested is None and depth < len(path) - 1 and not _is_mapping(annotation):
            return f"'{part}' is a value, not a section"
        cls = nested
    return None


def _is_mapping(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict


def _nearest_key_message(key: str, valid: list[str], where: str) -> str:
    def likeness(name: str) -> tuple[float, bool]:  # equally alike: the key's own completion first
        return difflib.SequenceMatcher(None, key, name).ratio(), name.startswith(key)

    best = max(valid, key=likeness, default=None)
    close = [best] if best is not None and likeness(best)[0] >= 0.5 else []
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown key '{key}' in {where}; {hint}"
