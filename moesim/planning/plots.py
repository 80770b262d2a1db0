"""The sizing report's plots, each drawn with matplotlib (imported only when a plot is drawn) into PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def figure_png(draw: Any, width: float = 7.0, height: float = 3.6, panels: int = 1) -> bytes:
    """PNG bytes of the figure `draw` draws on its axes (a sequence of `panels` axes side by side when more
    than one)."""
    import matplotlib  # heavy: loaded only where a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(width, height), dpi=110)
    draw(axes)
    if panels > 1:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)  # keeps outside legends and long labels
    plt.close(figure)
    return buffer.getvalue()


PHASE_SEGMENTS = 9
"""Phases drawn in their own colour; the rest share one grey "other" segment (tab10 has ten distinct colours)."""


def phase_segments(phase_seconds: dict[str, float], limit: int = PHASE_SEGMENTS) -> list[tuple[str, float]]:
    """The largest phases, largest first, and the rest summed as "other (n phases)"; zero-time phases left out."""
    phases = sorted(
        ((name, seconds) for name, seconds in phase_seconds.items() if seconds > 0), key=lambda item: -item[1]
    )
    if len(phases) <= limit + 1:
        return phases
    rest = phases[limit:]
    return phases[:limit] + [(f"other ({len(rest)} phases)", sum(seconds for _, seconds in rest))]


def phase_plot(result: Any) -> bytes:
    segments = phase_segments(result.phase_seconds)

    def draw(axes: Any) -> None:
        import matplotlib  # heavy: loaded only where a plot is drawn

        colours = matplotlib.colormaps["tab10"].colors
        left = 0.0
        for index, (name, seconds) in enumerate(segments):
            colour = "0.6" if name.startswith("other") else colours[index % len(colours)]
            axes.barh(["step"], [seconds], left=left, color=colour, label=f"{name} ({seconds:.3g} s)")
            left += seconds
        axes.set_xlabel("seconds per step (busiest stage, mean per rank)")
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes.set_title("Step time by phase")

    return figure_png(draw, width=7.0, height=2.8)


def load_heatmap(loads: np.ndarray) -> bytes:
    def draw(axes: Any) -> None:
        image = axes.imshow(loads / loads.mean(axis=1, keepdims=True), aspect="auto", cmap="viridis")
        axes.set_xlabel("expert")
        axes.set_ylabel("MoE layer")
        axes.set_title("Expert load / mean load per layer")
        axes.figure.colorbar(image, ax=axes, label="load / mean")

    return figure_png(draw)


def drop_plot(points: list[tuple[float, float, float]]) -> bytes:
    def draw(axes: Any) -> None:
        factors = [p[0] for p in points]
        axes.plot(factors, [100 * p[1] for p in points], marker="o", color="tab:blue")
        axes.set_xlabel("capacity factor")
        axes.set_ylabel("dropped token-expert pairs (%)", color="tab:blue")
        twin = axes.twinx()
        twin.plot(factors, [p[2] for p in points], marker="s", color="tab:red")
        twin.set_ylabel("step time (s)", color="tab:red")
        axes.set_title("Drops and step time against capacity factor")

    return figure_png(draw)


def pareto_plot(points: list[dict[str, float]], counted: str = "tokens") -> bytes:
    def draw(axes: Any) -> None:
        axes.plot([p["tokens_per_s"] for p in points], [p["dollars_per_hour"] for p in points], marker="o")
        for p in points:
            axes.annotate(
                f"{int(p['gpus'])} GPUs",
                (p["tokens_per_s"], p["dollars_per_hour"]),
                fontsize=7,
                xytext=(4, -10),
                textcoords="offset points",
            )
        axes.set_xlabel(f"{counted} / s")
        axes.set_ylabel("$ / hour")
        axes.set_title("Cost against throughput (nearby cluster sizes)")

    return figure_png(draw)


def memory_plot(memory: dict[str, float]) -> bytes:
    parts = [
        "weights_bytes",
        "grads_bytes",
        "optimizer_bytes",
        "activations_bytes",
        "alltoall_buffer_bytes",
        "kv_cache_bytes",
    ]

    def draw(axes: Any) -> None:
        bottom = 0.0
        for part in parts:
            value = memory[part] / 1e9
            if value > 0:
                axes.bar(["per GPU"], [value], bottom=bottom, label=f"{part.replace('_bytes', '')} ({value:.1f} GB)")
            bottom += value
        capacity = memory["capacity_bytes"] / 1e9
        axes.axhline(capacity, color="black", linestyle="--", label=f"HBM capacity ({capacity:.0f} GB)")
        axes.set_ylim(0, max(bottom, capacity) * 1.08)
        axes.set_ylabel("GB")
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the bar, never over the line
        axes.set_title("Memory per GPU (most loaded stage)")

    return figure_png(draw, width=5.0)


def latency_spread(values: Any, unit: str, scale: float) -> str:
    """A latency distribution in a few words: its median and 99th percentile in `unit`, or, where every request
    took the same time to within 1%, that figure and why (same-length requests in lockstep give one value)."""
    ordered = np.sort(np.asarray(values, dtype=float) * scale)
    if not ordered.size:
        return "no requests counted"
    median, tail = float(np.percentile(ordered, 50)), float(np.percentile(ordered, 99))
    if ordered[-1] <= ordered[0] * 1.01:
        return f"every request {median:.3g} {unit} (identical requests in lockstep)"
    return f"p50 {median:.3g} {unit}, p99 {tail:.3g} {unit}"


def latency_cdf_plot(ttft_s: list[float], tpot_s: list[float]) -> bytes:
    """The share of requests served within each latency, time to first token and time per output token side by
    side, each on its own axis and unit with its 50th, 90th and 99th percentiles marked."""

    def draw(panels: Any) -> None:
        for axes, values, name, unit, scale in (
            (panels[0], ttft_s, "Time to first token", "s", 1.0),
            (panels[1], tpot_s, "Time per output token", "ms", 1e3),
        ):
            ordered = np.sort(np.asarray(values, dtype=float) * scale)
            if ordered.size:
                shares = np.arange(1, ordered.size + 1) / ordered.size
                axes.step(np.concatenate(([ordered[0]], ordered)), np.concatenate(([0.0], shares)), where="post")
                for percentile, style in ((50, ":"), (90, "--"), (99, "-.")):
                    position = np.percentile(ordered, percentile)
                    axes.axvline(position, color="grey", linestyle=style, linewidth=0.8, label=f"p{percentile}")
                spread = max(ordered[-1] - ordered[0], ordered[-1] * 0.05)  # a single value still gets an axis
                axes.set_xlim(max(0.0, ordered[0] - spread * 0.1), ordered[-1] + spread * 0.1)
                axes.legend(fontsize=7, loc="lower right")
            axes.set_xlabel(f"{name.lower()} ({unit})")
            axes.set_ylabel("share of requests")
            axes.set_ylim(0, 1.02)
            axes.set_title(f"{name}\n{latency_spread(values, unit, scale)}", fontsize=8)

    return figure_png(draw, width=8.0, height=3.4, panels=2)


def serving_curve_plot(points: list[tuple[int, float, float]]) -> bytes:
    """Throughput per GPU against time per output token over concurrency (concurrency, TPOT s, tokens/s/GPU)."""

    def draw(axes: Any) -> None:
        axes.plot([p[1] * 1e3 for p in points], [p[2] for p in points], marker="o")
        for concurrency, tpot, throughput in points:
            axes.annotate(
                f"{concurrency}", (tpot * 1e3, throughput), fontsize=7, xytext=(4, -10), textcoords="offset points"
            )
        axes.set_xlabel("time per output token, median (ms)")
        axes.set_ylabel("output tokens / s per GPU")
        axes.set_title("Throughput against latency (labels: requests in flight)")

    return figure_png(draw)


def iteration_plot(iterations: list[tuple[str, dict[str, float]]]) -> bytes:
    """Where an engine iteration's time goes: one bar per iteration (label, seconds by phase), in shares of its
    time, the time itself in the label."""
    totals: dict[str, float] = {}
    for _, phases in iterations:
        for name, seconds in phases.items():
            totals[name] = totals.get(name, 0.0) + seconds / max(1e-12, sum(phases.values()))
    shown = [name for name, _ in phase_segments(totals) if not name.startswith("other")]

    def draw(axes: Any) -> None:
        colours = iter(__import__("matplotlib").colormaps["tab10"].colors)
        left = np.zeros(len(iterations))
        for name in [*shown, "other"]:
            shares = np.array(
                [
                    100
                    * sum(s for n, s in phases.items() if n == name or (name == "other" and n not in shown))
                    / max(1e-12, sum(phases.values()))
                    for _, phases in iterations
                ]
            )
            if shares.any():
                axes.barh(range(len(iterations)), shares, left=left, label=name, color=next(colours, "grey"))
                left += shares
        labels = [f"{label}\n{sum(phases.values()) * 1e3:.3g} ms" for label, phases in iterations]
        axes.set_yticks(range(len(iterations)), labels, fontsize=7)
        axes.set_xlim(0, 100)
        axes.set_xlabel("% of the iteration (each rank's mean; waits for the busiest rank as 'wait')")
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes.set_title("Where an iteration's time goes")

    return figure_png(draw)
