"""The serving check's report: measured iterations beside moesim's prediction, made again from serving.json.

Predictions are recomputed by the current code whenever the report is made (`python -m
moesim.validation.serving_check_report validation/<device>/serving.json`), so a change to the cost model shows
against the same measurements without a GPU; a test holds the committed measurements to the prediction.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from moesim.serving.iteration import IterationCost
from moesim.validation.serving_cases import IterationCase, check_scenario, predict

SHIPPED_GPUS = {"H100": "H100-SXM", "H200": "H200", "H800": "H800"}


def shipped_gpu(device: str) -> str:
    """The GPU preset (and shipped profile) that predicts a device: H100-SXM for an H100, and so on; the H100's for a
    CPU trial (its predictions are then not this device's)."""
    for key, preset in SHIPPED_GPUS.items():
        if key in device:
            return preset
    return "H100-SXM"


def compared(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured case with moesim's prediction made now, and the ratios."""
    costs: dict[str, Any] = {}
    rows = []
    for row in document["rows"]:
        case = IterationCase(**row["case"])
        if case.model not in costs:
            scenario = check_scenario(case.model, document["predicted_gpu"], document["layers"])
            costs[case.model] = IterationCost(scenario)
        predicted = predict(case, costs[case.model])
        measured = row["measured"]
        rest = measured["iteration"] - measured["attention"]
        rows.append(
            {
                "model": case.model,
                "label": case.label,
                "kind": "mixed" if case.decode and case.prompts else "decode" if case.decode else "prefill",
                "measured_ms": measured["iteration"] * 1e3,
                "predicted_ms": predicted["iteration"] * 1e3,
                "ratio": predicted["iteration"] / measured["iteration"],
                "attention_ratio": predicted["attention"] / max(measured["attention"], 1e-12),
                "rest_ratio": (predicted["iteration"] - predicted["attention"]) / max(rest, 1e-12),
                "held_out": bool(row.get("held_out")),
            }
        )
    return rows


def errors(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median, 90th-percentile and largest relative error of the iteration, and the signed median."""
    relative = sorted(abs(row["ratio"] - 1) for row in rows)
    p90 = relative[min(len(relative) - 1, int(round(0.9 * (len(relative) - 1))))]
    return {
        "median": statistics.median(relative),
        "p90": p90,
        "max": relative[-1],
        "signed_median": statistics.median(row["ratio"] - 1 for row in rows),
    }


def _error_line(kind: str, rows: list[dict[str, Any]], what: str) -> list[str]:
    """The iteration error over one kind of rows (held out or development), or nothing where there are none."""
    if not rows:
        return []
    summary = errors(rows)
    return [
        f"Iteration error, {kind} ({what}): median {summary['median']:.1%}, p90 {summary['p90']:.1%}, "
        f"max {summary['max']:.1%}, signed median {summary['signed_median']:+.1%} over {len(rows)} iterations.",
        "",
    ]


def render(document: dict[str, Any]) -> str:
    """SERVING.md: what ran, the table (80 columns), and the errors."""
    rows = compared(document)
    development = [row for row in rows if not row["held_out"]]
    held = [row for row in rows if row["held_out"]]
    lines = [
        f"# Serving iterations on {document['device']}: measured against moesim",
        "",
        f"{document['layers']} decoder layers of each model (GQA attention through PyTorch's scaled dot-product "
        f"attention, the executor's MoE layer), bf16, torch {document['torch']}; device time, median of 5; "
        f"predicted with the shipped {document['predicted_gpu']} profile by `IterationCost` (regenerate: "
        "`python -m moesim.validation.serving_check_report <this folder>/serving.json`).",
        "",
        *_error_line("held out", held, "drawn before they were measured, validation/held_out/serving_iterations.json"),
        *_error_line("development", development, "looked at while the model changed: not a held-out accuracy"),
        "```",
        f"{'model':13} {'iteration':34} {'measured':>9} {'moesim':>6} {'attn':>5} {'rest':>5}",
        f"{'':13} {'':34} {'ms':>9} {'x':>6} {'x':>5} {'x':>5}",
    ]
    for row in rows:
        lines.append(
            f"{row['model'][:13]:13} {row['label'][:34]:34} {row['measured_ms']:9.3f} {row['ratio']:6.2f} "
            f"{row['attention_ratio']:5.2f} {row['rest_ratio']:5.2f}" + (" *" if row["held_out"] else "")
        )
    lines += [
        "```",
        "",
        "x: moesim / measured, for the iteration, its attention blocks (norm, QKV, attention, output projection) "
        "and the rest (embedding, MoE blocks, head on the sampled rows)." + (" *: held out." if held else ""),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    for path in paths:
        document = json.loads(Path(path).read_text())
        text = render(document)
        Path(path).with_name("SERVING.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
