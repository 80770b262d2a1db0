"""The single-device validation's report: `validation/<device>/REPORT.md`, its plot, rows and raw data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moesim.validation.single_device import FORWARD_PHASES
from moesim.validation.validate_report import scatter_svg

TARGET_MEDIAN, TARGET_P90 = 0.05, 0.15


def error_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median, 90th percentile and maximum of |error|, the median signed error, and the count."""
    errors = np.array([row["error"] for row in rows])
    signed = np.array([row["signed_error"] for row in rows])
    return {
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
        "max": float(errors.max()),
        "bias": float(np.median(signed)),
        "under": int((signed < 0).sum()),
        "count": len(rows),
    }


def _line(name: str, stats: dict[str, float]) -> str:
    return (
        f"| {name} | {stats['count']} | {stats['median']:.1%} | {stats['p90']:.1%} | {stats['max']:.1%} | "
        f"{stats['bias']:+.1%} |"
    )


def write_single_device_report(
    rows: list[dict[str, Any]], raw: dict[str, Any], profile_path: Path, folder: Path, command: str
) -> Path:
    """Write the report, `rows.json` and `layer_time.svg` into `folder` (beside the run's `raw.json`); the report's
    path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.json").write_text(json.dumps(rows, indent=1))
    (folder / "layer_time.svg").write_text(scatter_svg(rows))
    profile = json.loads(profile_path.read_text())
    layer = error_stats([row for row in rows if row["phase"] == "layer"])
    met = layer["median"] <= TARGET_MEDIAN and layer["p90"] <= TARGET_P90
    lines = [
        f"# Single-device validation: {raw['device']}",
        "",
        f"Produced by `{command}` (torch {raw['torch']}, {raw['rounds']} passes x {raw['repeats']} timed runs "
        "per layer after "
        f"2 warm-up runs, layers {raw['layer_seconds']:.0f} s). Whole MoE layers of the executor on one device "
        f"({'bf16, grouped-GEMM experts' if 'cpu' not in raw['device'] else 'fp32, per-expert loop'}; every "
        "phase timed "
        "with device events, no synchronisation between phases) against the simulator's prediction from the profile "
        f"`{profile_path.name}`, fitted in the same run to kernel micro-benchmarks and to calibration layers of other "
        "shapes whose runs were interleaved with these. The prediction replays the expert loads each layer's router "
        "produced. Errors are (predicted - measured) / measured: |error| median, 90th percentile, maximum, and the "
        "median signed error (negative: the simulator predicts too little).",
        "",
        f"**Layer-time error: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}, maximum "
        f"{layer['max']:.1%}; "
        f"median signed {layer['bias']:+.1%} ({layer['under']} of {layer['count']} under-predicted)** "
        f"(targets: median {TARGET_MEDIAN:.0%}, 90th percentile {TARGET_P90:.0%}: {'met' if met else 'NOT met'}).",
        "",
        (
            f"Grouped-GEMM model ({profile['grouped_gemm']['tile_rows']}x{profile['grouped_gemm']['tile_cols']} tiles, "
            f"{profile['grouped_gemm']['sms']} multiprocessors) against the {len(raw['kernels']['grouped'])} "
            "grouped GEMMs it was "
            f"fitted to: median error {profile['grouped_gemm_median_error']:.1%}."
            if profile.get("grouped_gemm")
            else "No grouped-GEMM model: this device runs its experts one after another, costed as separate GEMMs."
        ),
        "",
        "| what | layers | median | 90th pct | max | signed median |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        _line("layer (forward, or forward + backward)", layer),
    ]
    for mode in ("inference", "training"):
        chosen = [row for row in rows if row["phase"] == "layer" and row["mode"] == mode]
        if chosen:
            lines.append(
                _line(f"layer, {'forward only' if mode == 'inference' else 'forward + backward'}", error_stats(chosen))
            )
    for shape in sorted({row["shape"] for row in rows}):
        lines.append(
            _line(
                f"layer, {shape}",
                error_stats([row for row in rows if row["phase"] == "layer" and row["shape"] == shape]),
            )
        )
    missing = []
    for phase in (*FORWARD_PHASES, "backward"):
        chosen = [row for row in rows if row["phase"] == phase]
        if chosen:
            stats = error_stats(chosen)
            lines.append(_line(f"phase {phase}", stats))
            if stats["median"] > TARGET_MEDIAN or stats["p90"] > TARGET_P90:
                missing.append(f"{phase} (median {stats['median']:.1%}, 90th percentile {stats['p90']:.1%})")
    failed = [
        f"{result['case']} ({result['error']})"
        for result in raw["calibration"] + raw["validation"]
        if "error" in result
    ]
    lines += [
        "",
        "Phases that miss the layer targets on their own: " + ("; ".join(missing) if missing else "none") + ".",
        "",
        "Layers that could not run on this device (left out above): " + ("; ".join(failed) if failed else "none") + ".",
        "",
        "![predicted against measured layer time](layer_time.svg)",
        "",
        "| layer | busiest / mean expert | phase | measured (ms) | predicted (ms) | error |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['imbalance']:.2f} | {row['phase']} | {row['measured_s'] * 1e3:.3f} | "
            f"{row['predicted_s'] * 1e3:.3f} | {row['signed_error']:+.1%} |"
        )
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
