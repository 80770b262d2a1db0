"""`moesim profiles build`: fit every shipped profile to its tables and write `shipped/<GPU>.json`.

The router, permutation and un-permutation models come from the calibration that
moesim's executor ran on an H200 (`validation/profiles/NVIDIA-H200.json`, the phase
models of `DEVICE_PHASE_FEATURES`, every phase timed as device work): their per-element
terms (a top-k over the scores, a sort, gathers, a scatter-add) are device work, kept and scaled by the ratio of that
H200's measured copy bandwidth to the device's. Their fixed terms are not: 0.4-1.3 ms of
host time launching eager PyTorch's small kernels, which a GPU waits for in a layer
timed alone, but which a training step hides behind the previous kernels (the host runs
ahead) and a serving engine removes (CUDA graphs). A shipped profile keeps
`LAUNCHES[phase]` kernels of `KERNEL_LAUNCH_S` each instead, and the router's projection
at the GEMM model's time. A profile calibrated on one's own stack keeps what it measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from moesim.cluster.hardware import gpu_preset
from moesim.cost.build import KERNEL_LAUNCH_S, build_profile
from moesim.cost.kernel_tables import TABLES, read_tables, shipped_tables
from moesim.cost.shipped_profiles import SHIPPED, SHIPPED_PROFILES

DEVICE_NAMES = {"H200": "NVIDIA-H200", "H100-SXM": "NVIDIA-H100-80GB-HBM3"}
"""GPU preset -> the device name its executor measurements are filed under."""
PHASE_SOURCES = {
    name: Path(__file__).resolve().parents[2] / "validation" / "profiles" / f"{device}.json"
    for name, device in DEVICE_NAMES.items()
}
"""Each GPU's own executor measurements (its single-device validation), whose phase models its profile carries.
Taking the H200's for the H100 at the ratio of their copy bandwidths, as the profiles once did, assumed every
per-element cost scales with bandwidth; the H100's own fits show most do not (sort keys 1.03x the H200's,
scatter-add 1.03x, the router's top-k 0.98x; only plain gathers 1.3x, where bandwidth says 1.41x), and the
serving check's un-permutations ran 0.7x the scaled model."""
PHASE_SOURCE = PHASE_SOURCES["H200"]
"""The source for a GPU without its own."""
HELD_OUT_RECORD = Path(__file__).resolve().parents[2] / "validation" / "held_out" / "kernel_shapes.json"
"""The held-out draw of the kernel tables (`moesim.validation.held_out`): whole shapes the shipped profiles are never
fitted to, on which their held-out errors are measured."""


def held_out_rows(folder: str, record: Path = HELD_OUT_RECORD) -> Optional[dict[str, list[int]]]:
    """The held-out row numbers of a device's tables, by table; None where the checkout has no record."""
    if not record.exists():
        return None
    return json.loads(record.read_text())["held_out_rows"].get(folder, {})


SHIPPED_PHASES = ("router:", "permute", "unpermute")
"""The executor's measured phase models a shipped profile carries. Not its MoE-block backward: that model scales the
calibration's own kernel models (and gives the router's and shared experts' backward no time); the shipped kernel
models cost the backward's GEMMs from the tables."""
UNSCALED_FEATURES = ("1", "autograd")
"""Features that are not per-element work: host launches; '... seconds' features are relative to a kernel model."""
SCORE_PASS_BYTES = 12.0
"""Bytes per score the router's element-wise kernels move at the least: the fp32 scores written by the projection's
epilogue read by the score function, its output written, read again by the top-k."""
LAUNCHES = {"router": 10, "permute": 15, "unpermute": 4}
"""Kernels (and device memsets) per phase, counted with PyTorch's profiler in the executor's layer at 16 tokens on an
H100 (`validation/NVIDIA-H100-80GB-HBM3/kernel_counts.json`, `moesim.validation.kernel_counts`: Mixtral 8x7B's
and Qwen3-30B-A3B's top-k routers 10 and 9; the permutation 15, its stable sort several passes, 32 at 8,192 slots;
the un-permutation 4). Read from the code they had been 6, 5 and 3."""


def scaled_phase_fit(source: dict[str, Any], bandwidth: float, launch_s: Optional[float] = None) -> dict[str, Any]:
    """The source profile's router, permutation and un-permutation models at `bandwidth` (bytes/s); with `launch_s`,
    device work only: the fixed host terms become `LAUNCHES` kernels of `launch_s`, the router's GEMM its own time."""
    ratio = float(source["memory_bytes_per_s"]) / bandwidth
    fits = {}
    for key, value in source.get("phase_fit", {}).items():
        if not key.startswith(SHIPPED_PHASES):
            continue
        names, coefficients = list(value["features"]), []
        for name, c in zip(names, value["coefficients"]):
            if launch_s is not None and name in UNSCALED_FEATURES:
                c = LAUNCHES[key.split(":")[0]] * launch_s if name == "1" else 0.0
            elif launch_s is not None and name == "router GEMM seconds":
                c = 1.0
            elif name not in UNSCALED_FEATURES and not name.endswith("seconds"):
                c *= ratio
            if launch_s is not None and name == "tokens x experts":  # at least the score function's passes
                c = max(c, SCORE_PASS_BYTES / bandwidth)
            coefficients.append(c)
        if launch_s is not None and key.startswith("router:"):
            for name, c in (("router GEMM seconds", 1.0), ("tokens x experts", SCORE_PASS_BYTES / bandwidth)):
                if name not in names:
                    names.append(name)
                    coefficients.append(c)
        fits[key] = {"features": names, "coefficients": coefficients}
    return fits


def derived_profile(profile: dict[str, Any], gpu_name: str, donor: str) -> dict[str, Any]:
    """`profile` relabelled as another GPU preset's, derived from the donor's measurements."""
    derived = json.loads(json.dumps(profile))
    derived["device"] = gpu_name
    derived["source"] = f"derived from {donor} measurements ({profile['source']})"
    derived["sources"] = {key: f"derived from {donor}: {value}" for key, value in profile["sources"].items()}
    derived["derived_from"] = donor
    return derived


def build_shipped(
    target: Path = SHIPPED, phase_source: Optional[Path] = None, on_step: Optional[Callable[[str], None]] = None
) -> list[Path]:
    """Fit and write every shipped profile (each GPU's phase models from `PHASE_SOURCES`, or all from
    `phase_source`); the paths written."""
    step = on_step or (lambda _: None)
    built: dict[str, dict[str, Any]] = {}
    written = []
    target.mkdir(parents=True, exist_ok=True)
    for name, (folder, donor_folder, derived_from) in SHIPPED_PROFILES.items():
        step(name)
        if derived_from:
            profile = derived_profile(built[derived_from], name, derived_from)
        else:
            rows = held_out_rows(folder)
            tables = read_tables(TABLES / folder, rows) if rows is not None else shipped_tables(folder)
            held = read_tables(TABLES / folder, rows, held_out=True) if rows is not None else None
            assert tables is not None, folder
            donor_rows = held_out_rows(donor_folder) if donor_folder else None
            donor = read_tables(TABLES / donor_folder, donor_rows) if donor_folder else None  # its held-out rows too
            source = phase_source or PHASE_SOURCES.get(name, PHASE_SOURCE)
            phases = json.loads(source.read_text()) if source.exists() else {}
            fits = scaled_phase_fit(phases, tables.copy_bytes_per_s, KERNEL_LAUNCH_S) if phases else None
            profile = build_profile(tables, gpu_preset(name), donor, fits, held)
            if held is not None:
                record = json.loads(HELD_OUT_RECORD.read_text())
                profile["held_out"] = {
                    "record": "validation/held_out/kernel_shapes.json",
                    "shapes": record["held_out_shapes"],
                    "rows": sum(len(numbers) for numbers in (rows or {}).values()),
                    "note": "the fit never saw these shapes' rows; held_out_errors are the shipped model's error there",
                }
            if fits:
                own = phases.get("device", "") == DEVICE_NAMES.get(name)
                profile["sources"]["moe_kernels"] = (
                    f"{'measured' if own else 'derived'}: the per-element device costs moesim's executor measured "
                    f"on an {phases.get('device', 'H200')} ({source.name})"
                    + ("" if own else " at this GPU's bandwidth")
                    + f"; its kernels counted on an H100 (kernel_counts.json), {KERNEL_LAUNCH_S * 1e6:.0f} us each "
                    "in a stream (host launches hidden)"
                )
        built[name] = profile
        path = target / f"{name}.json"
        path.write_text(json.dumps(profile, indent=1) + "\n")
        written.append(path)
    return written
