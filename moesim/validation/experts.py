"""Expert compute on one device: the simulator's experts phase against the executor's, over load and imbalance.

With a single GPU (or CPU) there is no exchange to measure, but the experts phase is
most of an MoE layer and the part that imbalance hurts. Here the executor's own expert
loop (`MoELayer.run_experts`) runs on tokens that a real router assigned, with expert
popularity skewed on purpose (`skewed_tokens`), and the simulator predicts the same
phase from a profile: the GEMM curve of this device plus an experts-phase model fitted
on calibration layers (sizes unlike the validation grid's) that run interleaved with
the validation layers, so both see the device at the same times.
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from moesim.sim.compute import HOST_PHASE_FEATURES
from moesim.validation.timing import interleaved_samples, nonnegative_relative_fit


@dataclass(frozen=True)
class ExpertConfig:
    tokens: int
    hidden: int
    experts: int
    top_k: int
    skew: float

    @property
    def label(self) -> str:
        return f"T={self.tokens} h={self.hidden} E={self.experts} k={self.top_k} skew {self.skew:g}"


def expert_grids(device: str, quick: bool) -> tuple[list[ExpertConfig], list[ExpertConfig]]:
    """(calibration, validation) configurations; no hidden size appears in both."""
    if quick:
        return ([ExpertConfig(256, 48, 4, 2, 0.0), ExpertConfig(512, 96, 8, 1, 1.0), ExpertConfig(384, 64, 4, 2, 2.0)],
                [ExpertConfig(512, 80, 4, 2, 1.0)])
    if device == "cuda":
        calibration_sizes, validation_sizes = ((6144, 768), (24576, 1536), (12288, 3072)), ((8192, 1024), (32768, 2048))
    else:
        calibration_sizes, validation_sizes = ((768, 192), (3072, 384), (1536, 768)), ((1024, 256), (4096, 512))
    calibration = [ExpertConfig(tokens, hidden, experts, 2, skew)
                   for (tokens, hidden), experts, skew in itertools.product(calibration_sizes, (12, 32), (0.0, 1.5))]
    validation = [ExpertConfig(tokens, hidden, experts, 2, skew)
                  for (tokens, hidden), experts, skew in itertools.product(validation_sizes, (8, 16), (0.0, 1.0, 2.0))]
    return calibration, validation


def _expert_setup(config: ExpertConfig, device: torch.device, seed: int) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer, the expert-sorted tokens and their local expert ids, per-expert loads, and the router logits."""
    from moesim.executor.launch import skewed_tokens
    from moesim.executor.layer import MoELayer
    from moesim.routing import make_router

    layer = MoELayer(config.hidden, 2 * config.hidden, config.experts,
                     make_router("top_k", num_experts=config.experts, top_k=config.top_k), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = skewed_tokens(torch.randn(config.tokens, config.hidden, generator=generator), layer.router_weight.detach(), config.skew)
    with torch.no_grad():
        assignment = layer.route(x)
        logits = layer.last_logits.detach().clone()  # type: ignore[union-attr]
        permutation = layer.permute(x, assignment)
        tokens, local, _, _ = layer.parallel.dispatch(permutation.tokens, permutation.expert_counts, config.experts)
    loads = torch.bincount(local, minlength=config.experts)
    return layer.to(device), tokens.to(device), local.to(device), loads, logits


def measure_experts(configs: list[ExpertConfig], device: torch.device, rounds: int, repeats: int) -> list[tuple[float, list[int], torch.Tensor]]:
    """Median seconds of each configuration's experts phase, its per-expert loads and its router logits."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else None
    setups = [_expert_setup(config, device, seed=index) for index, config in enumerate(configs)]
    tasks: dict[int, Callable[[], Any]] = {
        index: (lambda layer=layer, tokens=tokens, local=local: layer.run_experts(tokens, local))
        for index, (layer, tokens, local, _, _) in enumerate(setups)
    }
    with torch.no_grad():
        samples = interleaved_samples(tasks, rounds, repeats, synchronize)
    return [(statistics.median(samples[index]), [int(v) for v in loads.tolist()], logits)
            for index, (_, _, _, loads, logits) in enumerate(setups)]


def validate_experts(
    device: str = "cpu", quick: bool = False, rounds: int = 10, repeats: int = 2, profile_dir: str | Path = "validation/profiles",
    on_step: Optional[Callable[[str], None]] = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Calibrate and validate the experts phase on one device; rows per validation configuration, and the profile."""
    from moesim.validation.calibrate import (GEMM_ROWS, QUICK_GEMM_ROWS, experts_features, gemm_model, gemm_shapes, measure_gemm_rates,
                                             measure_launch, measure_memory, write_profile)
    from moesim.validation.validate import Config, predict, scenario_for
    from moesim.workload import RouterScores, save_trace

    step = on_step or (lambda _: None)
    target = torch.device("cuda") if device == "cuda" else torch.device("cpu")
    micro_rounds, micro_repeats = (2, 2) if quick else (5, 3)
    rows = list(QUICK_GEMM_ROWS if quick else GEMM_ROWS)
    step("GEMMs, memory and launches")
    measured_device = {
        "device": device, "ranks": 1, "quick": quick, "threads": torch.get_num_threads(), "rows": rows, "alltoall": [],
        "rates": measure_gemm_rates(target, rows, micro_rounds, micro_repeats, gemm_shapes(quick)),
        "memory": measure_memory(target, (2, 8) if quick else (8, 64, 256), micro_rounds, micro_repeats),
        "launch": measure_launch(target, micro_repeats), "backward_gemm_factor": 2.0,
    }
    calibration, validation = expert_grids(device, quick)
    step("calibration and validation expert loops, interleaved")
    results = measure_experts(calibration + validation, target, rounds, repeats)
    model = gemm_model(measured_device)
    samples = [(experts_features(model, config.tokens, config.hidden, config.experts, config.top_k, loads), seconds)
               for config, (seconds, loads, _) in zip(calibration, results)]
    coefficients = nonnegative_relative_fit([features for features, _ in samples], [seconds for _, seconds in samples])
    fits = {"experts": {"features": list(HOST_PHASE_FEATURES["experts"]), "coefficients": coefficients}}
    profile_path = write_profile(measured_device, [], [], profile_dir, fits=fits, suffix="-experts")
    profile = json.loads(profile_path.read_text())
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (config, (seconds, loads, logits)) in enumerate(zip(validation, results[len(calibration):])):
            trace = Path(scratch) / f"experts{index}.npz"
            save_trace(trace, [RouterScores(logits.float().cpu(), torch.zeros(config.tokens, dtype=torch.long),
                                            torch.zeros(config.tokens, dtype=torch.long), 0)])
            scenario = scenario_for(Config(config.tokens, config.hidden, config.experts, config.top_k, None, "top_k", config.skew, ranks=1),
                                    profile, profile_path, trace)
            predicted = predict(scenario)["experts"]
            load = np.asarray(loads, dtype=float)
            out.append({"config": config.label, "device": profile["device"], "imbalance": float(load.max() / load.mean()),
                        "tokens_per_expert_max": int(load.max()), "measured_s": seconds, "predicted_s": predicted,
                        "error": abs(predicted - seconds) / seconds})
    return out, profile_path


def write_experts_report(rows: list[dict[str, Any]], profile_path: Path, folder: str | Path, rounds: int, repeats: int) -> Path:
    """`EXPERTS-<device>.md` and its rows as JSON: measured and predicted experts phase, by load imbalance."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = rows[0]["device"] if rows else "unknown"
    errors = [row["error"] for row in rows]
    lines = [
        f"# Expert compute on one device: {device}",
        "",
        f"Produced by `moesim validate --experts-only` ({rounds} passes x {repeats} runs per configuration, calibration "
        f"layers interleaved; profile `{profile_path.name}`). The executor's expert loop on tokens a top-k router "
        "assigned, expert popularity skewed by a Zipf bias on the logits; the simulator predicts the same phase from the "
        "replayed router scores.",
        "",
        f"**Experts-phase error: median {np.median(errors):.1%}, 90th percentile {np.percentile(errors, 90):.1%}** "
        f"over {len(rows)} configurations.",
        "",
        "| configuration | busiest / mean expert load | busiest expert (tokens) | measured (ms) | predicted (ms) | error |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['config']} | {row['imbalance']:.2f} | {row['tokens_per_expert_max']} | "
                     f"{row['measured_s'] * 1e3:.3f} | {row['predicted_s'] * 1e3:.3f} | {row['error']:.1%} |")
    (folder / f"experts-{device}.json").write_text(json.dumps(rows, indent=1))
    path = folder / f"EXPERTS-{device}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
