"""`moesim profiles build`: fit every shipped profile to its tables and write `shipped/<GPU>.json`.

The router, permutation and un-permutation models come from the calibration that
moesim's executor ran on an H200 (`validation/profiles/NVIDIA-H200.json`, the phase
models of `DEVICE_PHASE_FEATURES`): their fixed terms (host launches) are kept, their
per-element terms (a top-k over the scores, a sort, gathers, a scatter-add) scaled by
the ratio of that H200's measured copy bandwidth to the device's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from moesim.cluster.hardware import gpu_preset
from moesim.profiles import SHIPPED, SHIPPED_PROFILES
from moesim.profiles.build import build_profile
from moesim.profiles.tables import shipped_tables

PHASE_SOURCE = Path(__file__).resolve().parents[2] / "validation" / "profiles" / "NVIDIA-H200.json"
SHIPPED_PHASES = ("router:", "permute", "unpermute")
"""The executor's measured phase models a shipped profile carries. Not its MoE-block backward: that model scales the
calibration's own kernel models (and gives the router's and shared experts' backward no time); the shipped kernel
models cost the backward's GEMMs from the tables."""
UNSCALED_FEATURES = ("1", "autograd")
"""Features that are not per-element work: host launches; '... seconds' features are relative to a kernel model."""


def scaled_phase_fit(source: dict[str, Any], bandwidth: float) -> dict[str, Any]:
    """The source profile's router, permutation and un-permutation models at `bandwidth` (bytes/s)."""
    ratio = float(source["memory_bytes_per_s"]) / bandwidth
    fits = {}
    for key, value in source.get("phase_fit", {}).items():
        if not key.startswith(SHIPPED_PHASES):
            continue
        names = value["features"]
        fits[key] = {"features": names, "coefficients": [
            c if (name in UNSCALED_FEATURES or name.endswith("seconds")) else c * ratio
            for name, c in zip(names, value["coefficients"])]}
    return fits


def phase_errors(rows_path: Path) -> Optional[dict[str, Any]]:
    """The error of the router, permutation and un-permutation models on the single-device validation's layers."""
    if not rows_path.exists():
        return None
    from moesim.profiles.build import error_summary

    rows = [row for row in json.loads(rows_path.read_text()) if row["phase"] in ("router", "permute", "unpermute")]
    return error_summary([row["signed_error"] for row in rows], f"{rows_path.parent.name} validation layers") if rows else None


def derived_profile(profile: dict[str, Any], gpu_name: str, donor: str) -> dict[str, Any]:
    """`profile` relabelled as another GPU preset's, derived from the donor's measurements."""
    derived = json.loads(json.dumps(profile))
    derived["device"] = gpu_name
    derived["source"] = f"derived from {donor} measurements ({profile['source']})"
    derived["sources"] = {key: f"derived from {donor}: {value}" for key, value in profile["sources"].items()}
    derived["derived_from"] = donor
    return derived


def build_shipped(target: Path = SHIPPED, phase_source: Path = PHASE_SOURCE,
                  on_step: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Fit and write every shipped profile; the paths written."""
    step = on_step or (lambda _: None)
    phases = json.loads(phase_source.read_text()) if phase_source.exists() else {}
    validation_errors = phase_errors(phase_source.parent.parent / "NVIDIA-H200" / "rows.json")
    built: dict[str, dict[str, Any]] = {}
    written = []
    target.mkdir(parents=True, exist_ok=True)
    for name, (folder, donor_folder, derived_from) in SHIPPED_PROFILES.items():
        step(name)
        if derived_from:
            profile = derived_profile(built[derived_from], name, derived_from)
        else:
            tables = shipped_tables(folder)
            assert tables is not None, folder
            donor = shipped_tables(donor_folder) if donor_folder else None
            fits = scaled_phase_fit(phases, tables.copy_bytes_per_s) if phases else None
            profile = build_profile(tables, gpu_preset(name), donor, fits)
            if fits:
                same = phases.get("device", "").replace("NVIDIA-", "") == name
                profile["sources"]["moe_kernels"] = (
                    f"measured by moesim's executor on this GPU ({phase_source.name})" if same else
                    f"derived from moesim's executor on an {phases.get('device', 'H200')} ({phase_source.name}), "
                    "per-element terms scaled to this GPU's bandwidth")
                if validation_errors:
                    profile["errors"]["moe_kernels"] = validation_errors
        built[name] = profile
        path = target / f"{name}.json"
        path.write_text(json.dumps(profile, indent=1) + "\n")
        written.append(path)
    return written
