"""Validation: the same MoE layer measured by the executor and predicted by the simulator.

For each configuration of a grid (tokens, hidden size, experts, top-k, capacity factor,
skew of the router weights, routing rule) the executor runs one MoE layer forward on
`ranks` processes and records its router scores; the simulator then predicts the same
layer from the calibrated profile, replaying those very scores, so both see the same
routing. Per phase and for the whole layer the relative error |predicted - measured| /
measured is reported, with the median and 90th percentile, in `validation/REPORT.md`
and a scatter plot of predicted against measured (SVG).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from moesim.cluster.topology import Topology
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.compute import CostModel
from moesim.sim.engine import run_stage_fast
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers

MOE_PHASES = ("router", "permute", "dispatch", "experts", "combine", "unpermute")


@dataclass(frozen=True)
class Config:
    tokens: int
    hidden: int
    experts: int
    top_k: int
    capacity_factor: Optional[float]
    strategy: str
    skew: float = 0.0
    ranks: int = 2
    mode: str = "inference"

    @property
    def rule_label(self) -> str:
        return f"{self.strategy} {'dropless' if self.capacity_factor is None else f'cf {self.capacity_factor}'}"

    @property
    def shape_label(self) -> str:
        skew = f" skew {self.skew:g}" if self.skew else ""
        training = " training" if self.mode == "training" else ""
        return f"R={self.ranks} T={self.tokens} h={self.hidden} E={self.experts} k={self.top_k}{skew}{training}"

    @property
    def label(self) -> str:
        factor = "dropless" if self.capacity_factor is None else f"cf {self.capacity_factor}"
        skew = f" skew {self.skew:g}" if self.skew else ""
        training = " training" if self.mode == "training" else ""
        return f"{self.strategy} R={self.ranks} T={self.tokens} h={self.hidden} E={self.experts} k={self.top_k} {factor}{skew}{training}"


def default_grid(quick: bool = False, ranks: int = 2) -> list[Config]:
    """Configurations unlike the calibration's: every size here differs from the sizes calibration timed.

    On 2 ranks the full grid crosses tokens per rank, hidden size, experts, top-k and the
    routing rule (top-k dropless, top-k with capacity factor 1.25, expert choice), then
    repeats the top-k rows of the smaller hidden size with a Zipf-skewed expert popularity,
    and the dropless top-k rows as training steps (forward and backward). Other rank
    counts run the unskewed forward rows of the smaller hidden size.
    """
    if quick:
        return [Config(512, 128, 4, 2, None, "top_k", ranks=ranks), Config(1024, 256, 8, 2, 1.25, "top_k", skew=1.0, ranks=ranks)]
    grid = []
    rules = ((None, "top_k"), (1.25, "top_k"), (1.25, "expert_choice"))
    hiddens = (256, 512) if ranks == 2 else (256,)
    for tokens, hidden, experts, top_k, (factor, strategy) in itertools.product((1024, 4096), hiddens, (4, 8), (1, 2), rules):
        grid.append(Config(tokens, hidden, experts, top_k, factor, strategy, ranks=ranks))
    if ranks == 2:
        for tokens, experts, top_k, factor in itertools.product((1024, 4096), (4, 8), (1, 2), (None, 1.25)):
            grid.append(Config(tokens, 256, experts, top_k, factor, "top_k", skew=1.0, ranks=ranks))
        for tokens, hidden, experts, top_k in itertools.product((1024, 4096), (256, 512), (4, 8), (1, 2)):
            grid.append(Config(tokens, hidden, experts, top_k, None, "top_k", ranks=ranks, mode="training"))
    return [config for config in grid if config.experts % ranks == 0]


def scenario_for(config: Config, profile: Optional[dict[str, Any]] = None, profile_path: Optional[Path] = None,
                 trace: Optional[Path] = None) -> Scenario:
    """A one-MoE-layer scenario; with a profile, its cluster is this machine as the calibration measured it."""
    ranks = config.ranks
    cluster: dict[str, Any] = {"num_nodes": 1, "gpus_per_node": ranks}
    if profile is not None:
        alltoall = profile["alltoall"]
        cluster.update(gpu={
            "name": profile["device"], "peak_bf16_tflops": profile["peak_flops"] / 1e12, "hbm_gb": 1000,
            "hbm_tb_per_s": profile["memory_bytes_per_s"] / 1e12, "scale_up_gb_per_s": alltoall["bytes_per_s"] / 1e9,
            "nic_gbps": 100}, scale_up_latency_us=alltoall["latency_s"] * 1e6)
    document: dict[str, Any] = {
        "name": config.label,
        "model": {"preset": "tiny-moe", "num_layers": 1, "hidden_size": config.hidden, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "moe_intermediate_size": 2 * config.hidden, "intermediate_size": 2 * config.hidden,
                  "num_experts": config.experts, "top_k": config.top_k},
        "cluster": cluster,
        "parallelism": {"ep_size": ranks},
        "workload": {"mode": config.mode, "micro_batch_size": 1, "seq_len": config.tokens, "expert_popularity_skew": config.skew,
                     "precision": {"activations": "fp32", "weights": "fp32"}},
        "routing": {"strategy": config.strategy, "capacity_factor": config.capacity_factor},
        "simulation": {"network_mode": "fast", "max_routed_tokens": config.tokens * ranks, "overlap_shared_experts": False},
    }
    if profile_path is not None:
        document["simulation"]["cost_profile"] = str(profile_path)
    if trace is not None:
        document["workload"].update(scores="trace", trace_path=str(trace))
    return scenario_from_dict(document)


def predict(scenario: Scenario) -> dict[str, float]:
    """Predicted seconds per MoE phase (waits counted in the collective they precede) and for the layer."""
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    cost = CostModel.from_profile(scenario.simulation.cost_profile)  # type: ignore[arg-type]
    tokens = scenario.workload.seq_len
    routing, _ = route_layers(scenario, [0], tokens * scenario.parallelism.ep_size, topology.gpus_per_node)
    program = PhaseBuilder(scenario, plan, cost, topology, tokens, tokens).stage_program(0, routing, 0)
    phases = [phase for phase in program.forward if phase.name in MOE_PHASES]
    seconds, busy = run_stage_fast(phases, scenario.parallelism.ep_size)
    predicted = {name: busy.get(name, 0.0) for name in MOE_PHASES}
    # every rank runs the same router and permutation, so the only wait is for the slowest
    # experts, and a rank shows it inside its measured combine
    predicted["combine"] += busy.get("wait", 0.0)
    predicted["layer"] = seconds
    if scenario.workload.mode == "training":
        backward = [phase for phase in program.backward if phase.name in MOE_PHASES]
        predicted["backward"], _ = run_stage_fast(backward, scenario.parallelism.ep_size)
        predicted["layer"] += predicted["backward"]
    return predicted


def measured_phases(report: dict[str, Any], ranks: int) -> dict[str, float]:
    """Per MoE phase the mean over ranks of each rank's median; the layer: the slowest rank's sum of its medians."""
    timed = [name for name in (*MOE_PHASES, "backward") if name in report["phases_s"]]
    measured = {name: float(np.mean(report["phases_s"][name])) for name in timed}
    measured["layer"] = float(max(sum(report["phases_s"][name][rank] for name in timed) for rank in range(ranks)))
    return measured


def validate(
    profile_path: Optional[str | Path] = None, ranks: int = 2, quick: bool = False, rounds: int = 10, repeats: int = 2,
    profile_dir: str | Path = "validation/profiles", device: str = "cpu",
    on_progress: Optional[Callable[[int, int], None]] = None, on_step: Optional[Callable[[str], None]] = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Measure every configuration, then predict each; rows per configuration and phase, and the profile used.

    All layers run in one process group, their repetitions spread over `rounds` passes.
    Without `profile_path` the calibration runs in the same passes: its micro-benchmarks
    first, then its layers (sizes unlike the grid's) interleaved with the grid's, so a
    change in the machine's speed during the run reaches calibration and validation
    alike; the profile fitted to them alone is written to `profile_dir`.
    """
    from moesim.executor.launch import measure_layers
    from moesim.validation.calibrate import calibration_scenarios, measure_device, write_profile

    grid = default_grid(quick, ranks)
    layers: list[Any] = []
    calibration: list[Scenario] = []
    device_measured = None
    if profile_path is None:
        device_measured = measure_device(device, ranks, quick, on_step)
        layers, calibration = calibration_scenarios(ranks, quick)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        traces = [Path(folder) / f"trace{index}.npz" for index in range(len(grid))]
        if on_step:
            on_step("calibration and validation layers, interleaved" if calibration else "validation layers")
        reports = measure_layers(calibration + [scenario_for(config) for config in grid], ranks, rounds=rounds, repeats=repeats,
                                 trace_paths=[None] * len(calibration) + [str(path) for path in traces], on_progress=on_progress)
        if device_measured is not None:
            profile_path = write_profile(device_measured, layers, reports[: len(calibration)], profile_dir)
        profile_path = Path(profile_path)  # type: ignore[arg-type]
        profile = json.loads(profile_path.read_text())
        for config, report, trace in zip(grid, reports[len(calibration):], traces):
            measured = measured_phases(report, ranks)
            predicted = predict(scenario_for(config, profile, profile_path, trace))
            common = {"config": config.label, "ranks": ranks, "mode": config.mode, "rule": config.rule_label, "shape": config.shape_label,
                      "samples": report["samples"], "calibrated_alongside": device_measured is not None}
            per_rank = {name: [float(value) for value in values] for name, values in report["phases_s"].items()}
            for phase in (*MOE_PHASES, *(["backward"] if "backward" in measured else []), "layer"):
                rows.append({**common, "phase": phase, "measured_s": measured[phase], "predicted_s": predicted[phase],
                             "measured_per_rank_s": per_rank.get(phase, []),
                             "error": abs(predicted[phase] - measured[phase]) / measured[phase] if measured[phase] > 0 else 0.0})
            wall = float(max(report["phases_s"]["layer"]))
            rows.append({**common, "phase": "layer_wall", "measured_s": wall, "predicted_s": predicted["layer"],
                         "error": abs(predicted["layer"] - wall) / wall})
    return rows, profile_path


def summary(rows: list[dict[str, Any]], phase: str = "layer") -> dict[str, float]:
    errors = [row["error"] for row in rows if row["phase"] == phase]
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)), "count": len(errors)}


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
    apart = [(by_rule[a], by_rule[b]) for by_rule in shared for a, b in pairs
             if abs(by_rule[a][0] - by_rule[b][0]) / min(by_rule[a][0], by_rule[b][0]) > tie]
    matching = sum(_same_order((first[0], second[0]), (first[1], second[1]), tie) for first, second in apart)
    return summed, matching, len(apart)


def scatter_svg(rows: list[dict[str, Any]], width: int = 480) -> str:
    """Predicted against measured layer time, log-log, with the y = x line (self-contained SVG)."""
    points = [(row["measured_s"], row["predicted_s"]) for row in rows if row["phase"] == "layer"]
    values = [value for point in points for value in point]
    low, high = np.log10(min(values)) - 0.1, np.log10(max(values)) + 0.1
    margin = 50

    def position(value: float) -> float:
        return margin + (np.log10(value) - low) / (high - low) * (width - 2 * margin)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{width}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{width}" fill="white"/>',
             f'<line x1="{margin}" y1="{width - margin}" x2="{width - margin}" y2="{margin}" stroke="#999" stroke-dasharray="4"/>']
    for measured, predicted in points:
        parts.append(f'<circle cx="{position(measured):.1f}" cy="{width - position(predicted):.1f}" r="4" '
                     'fill="#1f77b4" fill-opacity="0.7"/>')
    parts.append(f'<text x="{width / 2}" y="{width - 12}" text-anchor="middle">measured layer time (s, log)</text>')
    parts.append(f'<text x="14" y="{width / 2}" text-anchor="middle" transform="rotate(-90 14 {width / 2})">predicted (s, log)</text>')
    for exponent in range(int(np.ceil(low)), int(np.floor(high)) + 1):
        tick = 10.0**exponent
        parts.append(f'<text x="{position(tick):.1f}" y="{width - margin + 16}" text-anchor="middle">1e{exponent}</text>')
        parts.append(f'<text x="{margin - 6}" y="{width - position(tick) + 4:.1f}" text-anchor="end">1e{exponent}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(rows: list[dict[str, Any]], profiles: dict[int, dict[str, Any]], folder: str | Path,
                 rounds: int = 10, repeats: int = 2) -> Path:
    """validation/REPORT.md (+ the plot and the raw rows as JSON); `profiles`: the profile used for each rank count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation_layer_time.svg").write_text(scatter_svg(rows))
    (folder / "validation_rows.json").write_text(json.dumps(rows, indent=1))
    layer, wall = summary(rows), summary(rows, "layer_wall")
    ordered, matching, compared = rule_orderings(rows)
    devices = "; ".join(
        f"{ranks} ranks: profile {profile['device']} (calibrated {profile['measured_at']}, torch {profile['torch']}, "
        f"{profile['alltoall']['backend']})" for ranks, profile in sorted(profiles.items())
    )
    lines = [
        "# Validation: simulator against the executor",
        "",
        f"{devices}. One expert-parallel MoE layer per configuration, forward (training: forward and backward); "
        f"{layer['count']} configurations. "
        f"Produced by `moesim validate --ranks {','.join(str(r) for r in sorted(profiles))} --rounds {rounds} --repeats {repeats}`.",
        "",
        f"**Layer time error: median {layer['median']:.1%}, 90th percentile {layer['p90']:.1%}** "
        f"(targets on CPU: 5% and 15%). Routing rules ({', '.join(sorted({row['rule'] for row in rows}))}) ordered "
        f"the same by layer time summed over the shapes they all ran, measured and predicted (rules within "
        f"{RULE_TIE:.0%} of each other count as tied): **{'yes' if ordered else 'no'}**; shape by shape, of the "
        f"{compared} pairs of rules measured more than {RULE_TIE:.0%} apart, {matching} are predicted in the same order.",
        "",
        "How it is measured: every configuration of a rank count runs in one process group, "
        f"{repeats} timed runs in each of {rounds} passes over the whole grid ({rounds * repeats} per configuration, "
        "after 2 warm-up runs), so a slow spell of the machine touches every configuration a little. A phase's "
        "measured time is the mean over ranks of each rank's median; the layer's is the slowest rank's sum of its "
        "phase medians. The simulator replays the router scores each run recorded, with the profile calibrated "
        "on the same number of ranks, whose sizes are all unlike this grid's"
        + (" and whose layers ran interleaved with these in the same passes (the machine's speed drifts by several "
           "percent over minutes; interleaving lets calibration and validation see the same machine). "
           if all(row.get("calibrated_alongside") for row in rows) else ". ") +
        f"Against the median wall-clock time of the whole layer instead (which keeps the scheduler's occasional "
        f"multi-millisecond wake-ups): median {wall['median']:.1%}, 90th percentile {wall['p90']:.1%}.",
        "",
        "| phase | median error | 90th percentile |",
        "| --- | ---: | ---: |",
    ]
    for phase in (*MOE_PHASES, "backward", "layer", "layer_wall"):
        if any(row["phase"] == phase for row in rows):
            stats = summary(rows, phase)
            lines.append(f"| {phase} | {stats['median']:.1%} | {stats['p90']:.1%} |")
    groups = [(f"{ranks} ranks", lambda row, ranks=ranks: row["ranks"] == ranks) for ranks in sorted(profiles)]
    groups += [(mode, lambda row, mode=mode: row.get("mode", "inference") == mode) for mode in ("inference", "training")]
    for name, member in groups:
        chosen = [row for row in rows if member(row)]
        if chosen and len(chosen) < len(rows):
            stats = summary(chosen)
            lines.append(f"| layer, {name} ({stats['count']} configurations) | {stats['median']:.1%} | {stats['p90']:.1%} |")
    lines += ["", "![predicted against measured layer time](validation_layer_time.svg)", "",
              "| configuration | phase | measured (ms) | predicted (ms) | error |", "| --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['config']} | {row['phase']} | {row['measured_s'] * 1e3:.3f} | "
                     f"{row['predicted_s'] * 1e3:.3f} | {row['error']:.1%} |")
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
