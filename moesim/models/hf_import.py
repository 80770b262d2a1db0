"""A Hugging Face `config.json` as a `ModelSpec`: the families people run, each key mapped or refused by name.

Mapped: Mixtral, Qwen2-MoE and Qwen3-MoE, DeepSeek-V2/V3, OLMoE, DBRX, GPT-OSS (alternating sliding-window and
full attention, attention sinks, biased experts) and Llama 4 (chunked attention with every fourth layer global,
dense and MoE layers interleaved, a shared expert). Every key that changes the architecture's parameters or work
is either mapped, refused with the key's name and the fix (`ModelImportError`), or approximated with a note that
says by how much (`ModelSpec.import_notes`, which the CLI prints as warnings). Keys that change neither (token ids,
rotary scaling, dropout, initialisation) are read past: rotary embeddings have no parameters here.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Optional

from moesim.models.hf_families import FAMILIES, MAPPERS, ModelImportError, Reader
from moesim.models.spec import ModelSpec


def looks_like_config_path(name: str) -> bool:
    """Whether a scenario's `model:` string names a config file (or a checkpoint folder) rather than a preset."""
    return name.endswith(".json") or "/" in name or "\\" in name


def config_reference(model: Any) -> Optional[tuple[Optional[str], Any]]:
    """Where a scenario's `model:` names a config file: (the key that holds the path, None for a bare string; the
    path as given), or None for a preset or a written-out model. `{hf_config: ...}` counts whatever it holds (a
    wrong type is the caller's error to word); `{preset: PATH}` where the name looks like a path."""
    if isinstance(model, str):
        return (None, model) if looks_like_config_path(model) else None
    if isinstance(model, dict) and "hf_config" in model:
        return "hf_config", model["hf_config"]
    if isinstance(model, dict) and isinstance(model.get("preset"), str) and looks_like_config_path(model["preset"]):
        return "preset", model["preset"]
    return None


def hf_file_fields(path: str | Path) -> dict[str, Any]:
    """`spec_from_hf_file(path)`'s fields, parsed once per file version: a plan or a sweep validates its scenario for
    every layout, and the file would be read and mapped each time."""
    try:
        stat = Path(path).stat()
    except OSError:
        return spec_from_hf_file(path).model_dump()  # the read fails there, with its one-line error
    return copy.deepcopy(_cached_fields(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _cached_fields(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return spec_from_hf_file(path).model_dump()


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The parsed `config.json` at `path` (a file, or a checkpoint folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        reason = error.strerror or str(error)
        raise ModelImportError(f"model: cannot read {path} ({reason}); give a config.json path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelImportError(f"model: {path} is not valid JSON ({error}); give a Hugging Face config.json") from None
    if not isinstance(document, dict):
        raise ModelImportError(f"model: {path} holds a {type(document).__name__}, not a config.json mapping")
    return document


def spec_from_hf_file(path: str | Path, **overrides: Any) -> ModelSpec:
    """`spec_from_hf_config` of the file at `path`, named after its folder (or file) and sourced to it."""
    path = Path(path)
    if path.is_dir() or path.name == "config.json":  # a checkpoint's folder names the model
        name = (path if path.is_dir() else path.parent).name or path.stem
    else:
        name = path.name.removesuffix(".json").removesuffix(".config")
    return spec_from_hf_config(read_hf_config(path), name=name, source=str(path), **overrides)


def spec_from_hf_config(
    config: dict[str, Any], name: str = "imported", source: str = "", **overrides: Any
) -> ModelSpec:
    """The `ModelSpec` of a Hugging Face config (text model of a multimodal one), fields overridden by `overrides`."""
    family = str(config.get("model_type", ""))
    vision = isinstance(config.get("vision_config"), dict)
    if family == "llama4" and isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": "llama4"}
    if family == "kimi_k25" and isinstance(config.get("text_config"), dict):  # Kimi-K2.5: DeepSeek-V3's text model
        config = {**config["text_config"], "model_type": "kimi_k2"}
        family = "kimi_k2"
    family = "llama4" if family == "llama4_text" else family
    if family not in MAPPERS:
        raise ModelImportError(
            f"model: config.json model_type '{family or '(none)'}' is not a family moesim maps "
            f"({', '.join(FAMILIES)}); write the model's fields out instead (docs/presets.md)"
        )
    reader = Reader(config, family)
    fields, notes = MAPPERS[family](reader)
    if vision:
        notes.append(
            "the vision encoder (vision_config) is not modelled: moesim plans the text model, its counts leave "
            "the encoder out"
        )
    fields.update(name=name, source=source or f"Hugging Face config.json ({family})", import_notes=notes)
    fields.update(overrides)
    try:
        return ModelSpec(**fields)
    except ValueError as error:
        raise ModelImportError(f"model: {source or name}: {error}") from None
