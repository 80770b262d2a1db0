"""How a scenario is read: files (YAML, TOML, JSON), `--set a.b=c` overrides, errors worded for the user, and
the JSON Schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from moesim.errors import ScenarioError
from moesim.models.hf_import import config_reference
from moesim.scenario.document import Scenario
from moesim.scenario.paths import field_path_problem
from moesim.scenario.sections import ClusterSpec
from moesim.scenario.stacks import apply_stack

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from moesim.cluster.hardware import gpu_preset_names
from moesim.cluster.presets import cluster_preset_names
from moesim.models.presets import model_preset_names


def path_problem(path: Sequence[Any], root: type[BaseModel] = Scenario) -> str | None:
    """Why a dotted scenario path does not name a field, or None if it does (`paths.field_path_problem` from the
    whole `Scenario`)."""
    return field_path_problem(path, root)


def parse_override(text: str, option: str = "--set") -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value), the value read as YAML (numbers, null, lists); a malformed one is an
    error naming `option`, the command-line option it came from."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.strip().split(".")]
    if not sep or not all(path):
        raise ScenarioError(f"{option} '{text}': expected KEY=VALUE with a dotted key, e.g. routing.top_k=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return path, value


_PRESET_SECTIONS = {("model",), ("cluster", "gpu")}


def apply_overrides(document: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `document` with each `a.b=c` override set (sections created as needed)."""
    result = json.loads(json.dumps(document, default=str)) if overrides else document
    for text in overrides:
        path, value = parse_override(text)
        problem = path_problem(path)
        if problem:
            raise ScenarioError(f"--set '{text}': {problem}")
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str) and tuple(path[: depth + 1]) in _PRESET_SECTIONS:
                child = {"preset": child}  # a preset name plus overrides
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return result


# ---------------------------------------------------------------- loading
def read_document(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON scenario file into a mapping; every failure is a ScenarioError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ScenarioError(f"{path}: cannot read the file ({reason})") from None
    if not text.strip():
        raise ScenarioError(f"{path}: the file is empty; a scenario needs at least a `model:` entry")
    suffix = path.suffix.lower()
    syntax = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
    try:
        if syntax == "TOML":
            document = tomllib.loads(text)
        elif syntax == "JSON":
            document = json.loads(text, object_pairs_hook=_unique_json_keys)
        else:
            document = yaml.load(text, Loader=_UniqueKeyLoader)
    except Exception as error:  # each parser has its own error type; all mean "not valid syntax"
        raise ScenarioError(f"{path}: not valid {syntax} ({_syntax_problem(error)})") from None
    if document is None:
        raise ScenarioError(f"{path}: the file holds no scenario; it needs at least a `model:` entry")
    if not isinstance(document, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of sections, found {type(document).__name__}")
    return _model_file_beside(document, path.parent)


def _model_file_beside(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A scenario's relative config.json path read from the scenario's own folder (then from the working folder),
    rewritten relative to the working folder so the document holds a path that works wherever it goes next."""
    model = document.get("model")
    reference = config_reference(model)
    if reference is None or not isinstance(reference[1], str) or Path(reference[1]).is_absolute():
        return document
    key, name = reference
    beside = folder / name
    if not beside.exists() or Path(name).exists() and Path(name).resolve() == beside.resolve():
        return document
    moved = os.path.relpath(beside)
    return {**document, "model": moved if key is None else {**model, key: moved}}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (plain YAML keeps the later silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}': the later would silently replace the earlier; keep one",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that gives no key twice."""
    keys = [key for key, _ in pairs]
    doubled = next((key for key in keys if keys.count(key) > 1), None)
    if doubled is not None:
        raise ValueError(f"duplicate key '{doubled}': the later would silently replace the earlier; keep one")
    return dict(pairs)


def _syntax_problem(error: Exception) -> str:
    """Where and what a parser complained about, in one line."""
    mark = getattr(error, "problem_mark", None)  # YAML
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', '') or error}"
    if isinstance(error, json.JSONDecodeError):
        return f"line {error.lineno}, column {error.colno}: {error.msg}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _format_validation_error(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field and the fix."""
    problems = error.errors()
    # a validator's own message says more than a type mismatch: where a union's branches all failed (a length
    # given as {min, max} with min above max), the branch that took the value's shape and said why comes first
    first = next((problem for problem in problems if problem["type"] == "value_error"), problems[0])
    location = _field_path(first["loc"])
    where = ".".join(str(part) for part in location)
    message = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "extra_forbidden":
        message = path_problem([str(part) for part in location]) or f"unknown key '{where}'"
    elif kind == "missing":
        message = f"{where}: required; add it to the scenario"
    elif where and not message.startswith(where.split(".")[0]):
        shown = first.get("input")
        got = "" if isinstance(shown, dict) else f" (got {shown!r})"
        message = f"{where}: {message.replace('Input should', 'should')}{got}"
    more = len({tuple(_field_path(problem["loc"])) for problem in problems}) - 1  # a union's branches: one field
    return message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


_BRANCH_NAMES = {"int", "float", "str", "bool", "list", "dict", "none"}


def _field_path(location: Sequence[Any]) -> list[Any]:
    """A pydantic error location without the names of a union's branches (`int`, `list[int]`, `function-after[...]`):
    the scenario's own field path."""
    return [
        part
        for part in location
        if not (isinstance(part, str) and (part.lower() in _BRANCH_NAMES or "[" in part or part[:1].isupper()))
    ]


def scenario_from_dict(document: Any, overrides: Sequence[str] = (), origin: str = "scenario") -> Scenario:
    """Validate a parsed document (plus overrides) into a `Scenario`; problems are ScenarioErrors."""
    if not isinstance(document, dict):
        raise ScenarioError(f"{origin}: a scenario must be a mapping of sections, found {type(document).__name__}")
    document = apply_stack(apply_overrides(document, overrides))  # the scenario's own settings win over its stack's
    try:
        return Scenario.model_validate(document)
    except ValidationError as error:
        raise ScenarioError(f"{origin}: {_format_validation_error(error)}") from None
    except ScenarioError as error:
        raise ScenarioError(f"{origin}: {error}") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        raise ScenarioError(f"{origin}: {type(error).__name__}: {error}") from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load, override and validate a scenario file.

    >>> load_scenario("scenarios/mixtral-8x7b-serving.yaml", overrides=["routing.top_k=1"])  # doctest: +SKIP
    """
    return scenario_from_dict(read_document(path), overrides, origin=str(path))


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of scenario files, with preset names allowed where a preset may stand."""
    schema = Scenario.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def preset_or_spec(spec_ref: str, names: list[str], label: str) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string", "enum": names, "description": f"{label} preset name"},
                {
                    "type": "object",
                    "required": ["preset"],
                    "properties": {"preset": {"type": "string", "enum": names}},
                    "description": f"{label} preset with overridden fields",
                },
                {"$ref": spec_ref},
            ]
        }

    model = preset_or_spec("#/$defs/ModelSpec", model_preset_names(), "Model")
    model["anyOf"][1:1] = [
        {"type": "string", "pattern": r"\.json$|[/\\]", "description": "A Hugging Face config.json (path)"},
        {
            "type": "object",
            "required": ["hf_config"],
            "properties": {"hf_config": {"type": "string"}},
            "description": "A Hugging Face config.json with overridden fields",
        },
    ]
    schema["properties"]["model"] = {**model, "description": Scenario.model_fields["model"].description}
    cluster = defs["ClusterSpec"]["properties"]

    cluster["preset"] = {
        "type": "string",
        "enum": cluster_preset_names(),
        "description": "A cluster preset whose fields the others override.",
    }
    cluster["gpu"] = {
        **preset_or_spec("#/$defs/GpuSpec", gpu_preset_names(), "GPU"),
        "description": ClusterSpec.model_fields["gpu"].description,
    }
    return schema
