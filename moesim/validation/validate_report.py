"""The CPU validation's report: error statistics (median, 90th percentile, maximum, signed bias), whether the
routing rules keep their order, the predicted-against-measured plot and `validation/REPORT.md`, with the held-out
grid's error reported on its own."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from moesim.validation.validate import MOE_PHASES


def summary(rows: list[dict[str, Any]], phase: str = "layer", held_out: bool = False) -> dict[str, float]:
    """Error of one phase over the main grid's rows (or the held-out grid's): median, 90th percentile and maximum of
    |predicted / measured - 1|, the median signed error (negative: the simulator under-predicts) and how many rows
    it under-predicts."""
    chosen = [row for row in rows if row["phase"] == phase and bool(row.get("held_out")) == held_out]
    errors = [row["error"] for row in chosen]
    signed = [row["predicted_s"] / row["measured_s"] - 1 for row in chosen if row["measured_s"] > 0]
    if not errors:
        return {
            "median": float("nan"),
            "p90": float("nan"),
            "max": float("nan"),
            "signed": float("nan"),
            "under": 0,
            "count": 0,
        }
    return {
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
        "max": float(np.max(errors)),
        "signed": float(np.median(signed)) if signed else 0.0,
        "under": sum(value < 0 for value in signed),
        "count": len(errors),
    }


def _row(name: str, stats: dict[str, float]) -> str:
    return (
        f"| {name} | {stats['median']:.1%} | {stats['p90']:.1%} | {stats['max']:.1%} | {stats['signed']:+.1%} | "
        f"{stats['under']} of {stats['count']} |"
    )


STATS_HEADER = [
    "| phase | median error | 90th percentile | maximum | signed median | under-predicted |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
]


RULE_TIE = 0.05
"""Rules whose measured layer times differ by less than this share are tied: the run-to-run noise of this
CPU is of that size, so their order is not a fact the simulator could be held to."""


def _same_order(measured: tuple[float, float], predicted: tuple[float, float], tie: float) -> bool:
    """Two rules' measured and predicted (first, second) layer times: the same order, or tied in both."""

    def gap(pair: tuple[float, float]) -> float:
        return (pair[1] - pair[0]) / min(pair)

    if abs(gap(measured)) <= tie:
        return abs(gap(predicted)) <= tie
    return gap(measured) * gap(predicted) > 0


def rule_orderings(rows: list[dict[str, Any]], tie: float = RULE_TIE) -> tuple[bool, int, int]:
    """Do the routing rules rank the same by layer time, measured and predicted?

    Only shapes that every rule ran (same tokens, hidden, experts, top-k, skew) count; rules
    within `tie` of each other count as tied. Returns (every pair of rules is in the same
    order, or tied in both, by layer time summed over those shapes; pairs measured apart by
    more than `tie` within a shape that the prediction orders the same; such pairs).
    """
    times: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        if row["phase"] == "layer":
            times.setdefault(row["shape"], {})[row["rule"]] = (row["measured_s"], row["predicted_s"])
    rules = sorted({rule for by_rule in times.values() for rule in by_rule})
    shared = [by_rule for by_rule in times.values() if set(by_rule) == set(rules)]
    if not shared:
        return True, 0, 0  # no shape that every rule ran: nothing to compare
    pairs = list(itertools.combinations(rules, 2))
    totals = {rule: [sum(by_rule[rule][which] for by_rule in shared) for which in (0, 1)] for rule in rules}
    summed = all(_same_order((totals[a][0], totals[b][0]), (totals[a][1], totals[b][1]), tie) for a, b in pairs)
    apart = [
        (by_rule[a], by_rule[b])
        for by_rule in shared
        for a, b in pairs
        if abs(by_rule[a][0] - by_rule[b][0]) / min(by_rule[a][0], by_rule[b][0]) > tie
    ]
    matching = sum(_same_order((first[0], second[0]), (first[1], second[1]), tie) for first, second in apart)
    return summed, matching, len(apart)


def scatter_svg(rows: list[dict[str, Any]], width: int = 480) -> str:
    """Predicted against measured layer time, log-log, with the y = x line (self-contained SVG)."""
    points = [
        (row["measured_s"], row["predicted_s"], bool(row.get("held_out"))) for row in rows if row["phase"] == "layer"
    ]
    values = [value for point in points for value in point[:2]]
    low, high = np.log10(min(values)) - 0.1, np.log10(max(values)) + 0.1
    margin = 50

    def position(value: float) -> float:
        return margin + (np.log10(value) - low) / (high - low) * (width - 2 * margin)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{width}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{width}" fill="white"/>',
        f'<line x1="{margin}" y1="{width - margin}" x2="{width - margin}" y2="{margin}" stroke="#999" '
        'stroke-dasharray="4"/>',
    ]
    for measured, predicted, held_out in points:  # held-out configurations in orange
        parts.append(
            f'<circle cx="{position(measured):.1f}" cy="{width - position(predicted):.1f}" r="4" '
            f'fill="{"#ff7f0e" if held_out else "#1f77b4"}" fill-opacity="0.7"/>'
        )
    parts.append(f'<text x="{width / 2}" y="{width - 12}" text-anchor="middle">measured layer time (s, log)</text>')
    parts.append(
        f'<text x="14" y="{width / 2}" text-anchor="middle" transform="rotate(-90 14 {width / 2})">predicted '
        "(s, log)</text>"
    )
    for exponent in range(int(np.ceil(low)), int(np.floor(high)) + 1):
        tick = 10.0**exponent
        parts.append(
            f'<text x="{position(tick):.1f}" y="{width - margin + 16}" text-anchor="middle">1e{exponent}</text>'
        )
        parts.append(
            f'<text x="{margin - 6}" y="{width - position(tick) + 4:.1f}" text-anchor="end">1e{exponent}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(
    rows: list[dict[str, Any]],
    profiles: dict[int, dict[str, Any]],
    folder: str | Path,
    rounds: int = 10,
    repeats: int = 2,
) -> Path:
    """validation/REPORT.md (+ the plot and the raw rows as JSON); `profiles`: the profile used for each rank count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation_layer_time.svg").write_text(scatter_svg(rows))
    (folder / "validation_rows.json").write_text(json.dumps(rows, indent=1))
    held_rows = [row for row in rows if row.get("held_out")]
    rows = [row for row in rows if not row.get("held_out")]
    layer, wall = summary(rows), summary(rows, "layer_wall")
    ordered, matching, compared = rule_orderings(rows)
    devices = "; ".join(
        f"{ranks} ranks: profile {profile['device']} (calibrated {profile['measured_at']}, torch {profile['torch']}, "
        f"{profile['alltoall']['backend']})"
        for ranks, profile in sorted(profiles.items())
    )
    lines = [
        "# Validation: simulator against the executor",
        "",
        f"{devices}. One expert-parallel MoE layer per configuration, forward (training: forward and backward); "
        f"{layer['count']} configurations. "
        f"Produced by `moesim validate --ranks {','.join(str(r) for r in sorted(profiles))} --rounds {rounds} "
        f"--repeats {repeats}`.",
        "",
        f"**Layer time error: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}, maximum "
        f"{layer['max']:.1%}; signed median {layer['signed']:+.1%}, under-predicted in {layer['under']} of "
        f"{layer['count']}** (targets on CPU: 5% and 15%)"
        + (
            f"; on the held-out grid ({len({row['config'] for row in held_rows})} configurations drawn once and never "
            f"looked at while tuning): **median {summary(held_rows, held_out=True)['median']:.1%}, 90th percentile "
            f"{summary(held_rows, held_out=True)['p90']:.1%}**"
            if held_rows
            else ""
        )
        + f". Routing rules ({', '.join(sorted({row['rule'] for row in rows}))}) ordered "
        f"the same by layer time summed over the shapes they all ran, measured and predicted (rules within "
        f"{RULE_TIE:.0%} of each other count as tied): **{'yes' if ordered else 'no'}**; shape by shape, of the "
        f"{compared} pairs of rules measured more than {RULE_TIE:.0%} apart, {matching} are predicted in the "
        "same order.",
        "",
        "How it is measured: every configuration of a rank count runs in one process group, "
        f"{repeats} timed runs in each of {rounds} passes over the whole grid ({rounds * repeats} per configuration, "
        "after 2 warm-up runs), so a slow spell of the machine touches every configuration a little. A phase's "
        "measured time is the mean over ranks of each rank's median; the layer's is the slowest rank's sum of its "
        "phase medians. The simulator replays the router scores each run recorded, with the profile calibrated "
        "on the same number of ranks, whose sizes are all unlike this grid's"
        + (
            " and whose layers ran interleaved with these in the same passes (the machine's speed drifts by several "
            "percent over minutes; interleaving lets calibration and validation see the same machine). "
            if all(row.get("calibrated_alongside") for row in rows)
            else ". "
        )
        + f"Against the median wall-clock time of the whole layer instead (which keeps the scheduler's occasional "
        f"multi-millisecond wake-ups): median {wall['median']:.1%}, 90th percentile {wall['p90']:.1%}."
        + (
            " The router scores every prediction replays are regenerated from the repository by "
            "`python -m moesim.validation.traces`, which checks them against the SHA-256 each run recorded in "
            "`validation_rows.json`."
            if any(row.get("trace_sha256") for row in rows)
            else ""
        ),
        "",
        *STATS_HEADER,
    ]
    for phase in (*MOE_PHASES, "backward", "layer", "layer_wall"):
        if any(row["phase"] == phase for row in rows):
            lines.append(_row(phase, summary(rows, phase)))
    groups = [(f"{ranks} ranks", lambda row, ranks=ranks: row["ranks"] == ranks) for ranks in sorted(profiles)]
    groups += [
        (mode, lambda row, mode=mode: row.get("mode", "inference") == mode) for mode in ("inference", "training")
    ]
    for name, member in groups:
        chosen = [row for row in rows if member(row)]
        if chosen and len(chosen) < len(rows):
            stats = summary(chosen)
            lines.append(_row(f"layer, {name} ({stats['count']} configurations)", stats))
    if held_rows:
        lines += [
            "",
            "## Held-out grid",
            "",
            "Drawn once at random (`moesim.validation.validate.held_out_grid`) from "
            "sizes neither the grid above nor the calibration uses, measured in the same passes, and never "
            "looked at while the phase model was tuned.",
            "",
            *STATS_HEADER,
        ]
        for phase in (*MOE_PHASES, "backward", "layer"):
            if any(row["phase"] == phase for row in held_rows):
                lines.append(_row(phase, summary(held_rows, phase, held_out=True)))
    lines += [
        "",
        "![predicted against measured layer time](validation_layer_time.svg)",
        "",
        "| configuration | phase | measured (ms) | predicted (ms) | error |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows + held_rows:
        lines.append(
            f"| {row['config']}{' (held out)' if row.get('held_out') else ''} | {row['phase']} | "
            f"{row['measured_s'] * 1e3:.3f} | {row['predicted_s'] * 1e3:.3f} | {row['error']:.1%} |"
        )
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
