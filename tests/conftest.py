"""Shared fixtures: small scenario documents and a writer for scenario files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import settings

# Property tests: 300 examples each in the normal run; MOESIM_HYPOTHESIS_PROFILE=thorough
# for a long hunt (10,000 each) before a release.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("thorough", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("MOESIM_HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def base_document() -> dict[str, Any]:
    """A valid scenario: Mixtral 8x7B on one 8-GPU node with EP 8."""
    return {
        "name": "test",
        "model": "mixtral-8x7b",
        "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "routing": {"strategy": "top_k", "capacity_factor": 1.25},
    }


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[[Any, str], Path]:
    """Write a document as YAML, TOML-free JSON or raw text, returning the path."""

    def write(document: Any, suffix: str = ".yaml") -> Path:
        path = tmp_path / f"scenario{suffix}"
        if isinstance(document, str):
            path.write_text(document)
        elif suffix == ".json":
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document))
        return path

    return write
