"""Single-device validation: the whole MoE layer measured by the executor and predicted by the simulator.

On one GPU (or the CPU, to try it) the executor's layer runs every phase a production
MoE layer runs on one device: router, permute, the experts as grouped GEMMs, unpermute,
shared experts, and for training cases the backward pass, in bf16 on a GPU, at the sizes
of published expert layers (`layer_cases`). Every phase is timed with device events.

The simulator predicts each layer from a profile measured in the same run: kernel
micro-benchmarks (grouped GEMMs and their weight gradients, GEMMs, a copy) fit the
grouped-GEMM and dense models, and calibration layers of other shapes, their runs
interleaved with the validation layers' so both see the device at the same times, fit
the phase models (`HOST_PHASE_FEATURES`). The prediction replays the expert loads the
executor's router produced; nothing of a validation layer enters the fit.

Everything measured is kept (`raw.json`), so the fit and the report can be made again
from it (`--from-raw`) without a GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from moesim.sim.compute import CostModel
from moesim.sim.phase_features import DEVICE_PHASE_FEATURES, PhaseWork, feature_vector, router_fit_key
from moesim.sim.phases import moe_work
from moesim.validation.layer_cases import GATED, LayerCase, LayerShape, layer_grids
from moesim.validation.timing import nonnegative_relative_fit

FORWARD_PHASES = ("router", "permute", "experts", "unpermute", "shared_experts")

HOST_AHEAD_CYCLES = 40_000_000
"""GPU clock cycles (about 20-25 ms) of a spin kernel queued before every timed run on a GPU.

While the GPU spins, the host queues the whole layer, so every phase is timed as device
work, as in a model whose host runs ahead of its GPU (the simulator's assumption). From
an idle GPU the first phases would time the host's launches instead: on the H100 machine
of 2026-11-26 the router phase took 0.4-1.0 ms that way against 0.02-0.1 ms of kernels,
and varied by 2x between runs of the same layer."""


class ResidentLayers:
    """Layers kept on the device by shape, the least recently used given back when their bytes pass `budget`."""

    def __init__(self, device: torch.device, dtype: torch.dtype, budget_bytes: float) -> None:
        self.device, self.dtype, self.budget = device, dtype, budget_bytes
        self.layers: OrderedDict[LayerShape, Any] = OrderedDict()

    def get(self, shape: LayerShape, router: Any) -> Any:
        from moesim.executor.layer import MoELayer

        if shape in self.layers:
            self.layers.move_to_end(shape)
        else:
            while self.layers and sum(s.weight_bytes for s in self.layers) + shape.weight_bytes > self.budget:
                self.layers.popitem(last=False)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.layers[shape] = MoELayer(
                shape.hidden,
                shape.ffn,
                shape.experts,
                router,
                activation=GATED,
                num_shared_experts=shape.shared,
                seed=17,
                dtype=self.dtype,
                device=self.device,
            )
        layer = self.layers[shape]
        layer.router = router
        return layer


def _router(case: LayerCase) -> Any:
    from moesim.routing import make_router

    return make_router(case.rule, case.shape.experts, case.top_k, **case.router_options())


def _inputs(
    case: LayerCase, layer: Any, index: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    from moesim.executor.launch import skewed_tokens

    generator = torch.Generator(device=device).manual_seed(1000 + index)
    x = torch.randn(case.tokens, case.shape.hidden, generator=generator, device=device).to(dtype)
    x = skewed_tokens(x, layer.router_weight, case.skew)
    return x.requires_grad_(case.training), torch.randn(
        case.tokens, case.shape.hidden, generator=generator, device=device
    ).to(dtype)


def measure_cases(
    cases: list[LayerCase],
    device: torch.device,
    rounds: int,
    repeats: int,
    warmup: int = 2,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> list[dict[str, Any]]:
    """Per case: median seconds of every phase (and their sum, 'forward'), the expert loads, the served slots."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # a GPU that holds few layers at once gives them back and builds them again between visits: the first run of
    # a visit then pays for fresh device memory (cudaMalloc on the host, inside the router and permute phases)
    revisit_warmup = 1 if device.type == "cuda" else 0
    budget = 0.45 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else float("inf")
    resident = ResidentLayers(device, dtype, budget)
    routers = [_router(case) for case in cases]
    samples: list[dict[str, list[float]]] = [{} for _ in cases]
    facts: list[dict[str, Any]] = [{} for _ in cases]
    for round_index in range(rounds):
        for index, case in enumerate(cases):
            if "error" not in facts[index]:
                try:
                    _visit(
                        case,
                        resident.get(case.shape, routers[index]),
                        index,
                        device,
                        dtype,
                        repeats + (warmup if round_index == 0 else revisit_warmup),
                        warmup if round_index == 0 else revisit_warmup,
                        samples[index],
                        facts[index],
                    )
                except (RuntimeError, ValueError) as error:  # out of memory, a kernel's limit: keep the others
                    facts[index] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            if on_progress:
                on_progress(round_index * len(cases) + index + 1, rounds * len(cases))
    results = []
    for case, phase_samples, fact in zip(cases, samples, facts):
        if "error" in fact:
            results.append({"case": case.label, **fact})
            continue
        phases = {name: statistics.median(values) for name, values in phase_samples.items()}
        phases["forward"] = sum(phases.get(name, 0.0) for name in FORWARD_PHASES)
        results.append({"case": case.label, "phases_s": phases, "samples": len(phase_samples["router"]), **fact})
    return results


def _visit(
    case: LayerCase,
    layer: Any,
    index: int,
    device: torch.device,
    dtype: torch.dtype,
    runs: int,
    untimed: int,
    samples: dict[str, list[float]],
    facts: dict[str, Any],
) -> None:
    """`runs` passes of one case's layer (the first `untimed` not recorded); its loads noted on the first visit."""
    x, upstream = _inputs(case, layer, index, device, dtype)
    for run in range(runs):
        for parameter in layer.parameters():
            parameter.grad = None
        if device.type == "cuda":
            torch.cuda._sleep(HOST_AHEAD_CYCLES)
        with torch.set_grad_enabled(case.training):
            out = layer(x)
            if case.training:
                with layer.phase("backward"):
                    out.backward(upstream)
        timings = layer.clock.read()
        if not facts:
            load = layer.last_assignment.expert_load
            facts.update(loads=[int(v) for v in load.tolist()], served=int(load.sum()))
        if run >= untimed:
            for name, seconds in timings.items():
                samples.setdefault(name, []).append(seconds)


def _gpu_of(profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": profile["device"],
        "peak_bf16_tflops": profile["peak_flops"] / 1e12,
        "hbm_gb": profile.get("memory_gb") or 1000,
        "hbm_tb_per_s": profile["memory_bytes_per_s"] / 1e12,
        "scale_up_gb_per_s": 450,
        "nic_gbps": 400,
    }


def base_profile(device_name: str, kernels: dict[str, Any], memory_gb: float) -> dict[str, Any]:
    """The profile's kernel models: dense efficiency curve by rows, copy bandwidth, and on a GPU the grouped-GEMM model
    (the CPU runs its experts one after another, so no grouped model describes it)."""
    from moesim.validation.kernels import dense_model_from, dense_peak, grouped_model_from

    peak = dense_peak(kernels)
    by_rows: dict[int, list[float]] = {}
    for row in kernels["dense"]:
        by_rows.setdefault(row["rows"], []).append(
            2.0 * row["rows"] * row["inner"] * row["cols"] / row["seconds"] / peak
        )
    on_gpu = kernels["sms"] > 1
    grouped, grouped_error = grouped_model_from(kernels) if on_gpu else (None, None)
    dense, dense_error = dense_model_from(kernels) if on_gpu else (None, None)
    rows = sorted(by_rows)
    return {
        "device": device_name,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "peak_flops": peak,
        "memory_bytes_per_s": kernels["copy_bytes_per_s"],
        "memory_efficiency": 1.0,
        "memory_gb": memory_gb,
        "kernel_launch_s": 0.0,
        "backward_gemm_factor": 2.0,
        "gemm_efficiency": {"rows": rows, "efficiency": [float(np.median(by_rows[r])) for r in rows]},
        "grouped_gemm": grouped.as_dict() if grouped else None,
        "grouped_gemm_median_error": grouped_error,
        "dense_gemm": dense.as_dict() if dense else None,
        "dense_gemm_median_error": dense_error,
        "phase_fit": {},
        "alltoall": {"ranks": 1, "backend": "none", "latency_s": 0.0, "bytes_per_s": 1e12},
    }


def case_features(
    case: LayerCase, measured: dict[str, Any], cost: CostModel
) -> dict[str, tuple[tuple[float, ...], float]]:
    """(features, measured seconds) of every calibrated phase key of one measured case (`DEVICE_PHASE_FEATURES`)."""
    shape, phases, loads = case.shape, measured["phases_s"], np.asarray(measured["loads"], dtype=float)
    served = float(measured["served"])

    def work(**extra: Any) -> PhaseWork:
        return moe_work(
            case.rule,
            case.capacity_factor,
            case.tokens,
            shape.hidden,
            shape.experts,
            case.top_k,
            served,
            recording=case.training,
            **extra,
        )

    def features(phase: str, **extra: float) -> tuple[float, ...]:
        return feature_vector(DEVICE_PHASE_FEATURES[phase], work(**extra))

    router_gemm = float(cost.gemm_seconds(case.tokens, shape.hidden, shape.experts))
    out = {
        router_fit_key(case.rule, case.capacity_factor): (
            features("router", router_gemm_seconds=router_gemm),
            phases["router"],
        ),
        "permute": (features("permute"), phases["permute"]),
        "unpermute": (features("unpermute"), phases["unpermute"]),
        "experts": (
            features(
                "experts",
                active_experts=int(np.count_nonzero(loads)),
                rows=served,
                ffn_seconds=cost.experts_ffn_seconds(loads, shape.hidden, shape.ffn, True),
            ),
            phases["experts"],
        ),
    }
    if shape.shared:
        dense = float(cost.ffn_seconds(case.tokens, shape.hidden, shape.ffn * shape.shared, True))
        out["shared_experts"] = (features("shared_experts", ffn_seconds=dense), phases["shared_experts"])
    if case.training:
        shuffle = phases["permute"] + phases["unpermute"]
        other = phases["router"] + phases.get("shared_experts", 0.0)
        backward = cost.experts_ffn_backward_seconds(loads, shape.hidden, shape.ffn, True)
        out["backward"] = (
            features("backward", backward_seconds=backward, shuffle_seconds=shuffle, other_seconds=other),
            phases["backward"],
        )
    return out


def fit_phases(
    profile: dict[str, Any], path: Path, cases: list[LayerCase], measured: list[dict[str, Any]]
) -> dict[str, Any]:
    """The phase models fitted to the calibration cases, written into the profile at `path`."""
    path.write_text(json.dumps(profile, indent=1))
    cost = CostModel.from_profile(path)
    samples: dict[str, list[tuple[tuple[float, ...], float]]] = {}
    for case, result in zip(cases, measured):
        for key, pair in case_features(case, result, cost).items():
            samples.setdefault(key, []).append(pair)
    profile["phase_fit"] = {}
    for key, pairs in sorted(samples.items()):
        names = DEVICE_PHASE_FEATURES[key.split(":")[0]]
        # at least three layers per feature: a phase seen in few calibration layers keeps only its first features
        kept = max(1, min(len(names), len(pairs) // 3))
        coefficients = nonnegative_relative_fit([f[:kept] for f, _ in pairs], [t for _, t in pairs])
        profile["phase_fit"][key] = {"features": list(names[:kept]), "coefficients": coefficients}
    path.write_text(json.dumps(profile, indent=1))
    return profile


def predict_case(
    case: LayerCase, measured: dict[str, Any], profile: dict[str, Any], path: Path, cost: Optional[CostModel] = None
) -> dict[str, float]:
    """The simulator's seconds per phase of one case, replaying the expert loads its router produced."""
    from moesim.cluster.topology import Topology
    from moesim.scenario import scenario_from_dict
    from moesim.sim.collectives import Traffic
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import StagePlan
    from moesim.sim.routing_load import LayerRouting

    scenario = scenario_from_dict(case.scenario_document(_gpu_of(profile), str(path)))
    loads = np.asarray(measured["loads"], dtype=float)
    requested = float(case.tokens * case.top_k)
    routing = LayerRouting(
        expert_tokens=loads,
        traffic=Traffic(np.arange(1), np.zeros((1, 1)), np.zeros((1, 1))),
        dropped_pairs=max(requested - loads.sum(), 0.0),
        requested_pairs=requested,
        load_imbalance=float(loads.max() / max(loads.mean(), 1e-12)),
        rank_rows=[loads],
    )
    builder = PhaseBuilder(
        scenario,
        StagePlan(scenario),
        cost or CostModel.from_profile(path),
        Topology.from_cluster(scenario.cluster),
        case.tokens,
        case.tokens,
    )
    program = builder.stage_program(0, [routing], 0)
    predicted = {phase.name: float(phase.seconds[0]) for phase in program.forward if phase.name in FORWARD_PHASES}
    predicted["forward"] = sum(predicted.values())
    if case.training:
        predicted["backward"] = sum(
            float(phase.seconds[0]) for phase in program.backward if phase.name in FORWARD_PHASES
        )
    predicted["layer"] = predicted["forward"] + predicted.get("backward", 0.0)
    return predicted


def comparison_rows(
    cases: list[LayerCase], measured: list[dict[str, Any]], profile: dict[str, Any], path: Path
) -> list[dict[str, Any]]:
    """One row per validation case and phase: measured, predicted, signed relative error."""
    rows = []
    cost = CostModel.from_profile(path)
    for case, result in zip(cases, measured):
        predicted = predict_case(case, result, profile, path, cost)
        phases = dict(result["phases_s"])
        phases["layer"] = phases["forward"] + phases.get("backward", 0.0)
        loads = np.asarray(result["loads"], dtype=float)
        for name in (*FORWARD_PHASES, "backward", "forward", "layer"):
            if name in phases and name in predicted and phases[name] > 0:
                rows.append(
                    {
                        "config": case.label,
                        "shape": case.shape.name,
                        "rule": case.rule_label,
                        "mode": "training" if case.training else "inference",
                        "phase": name,
                        "measured_s": phases[name],
                        "predicted_s": predicted[name],
                        "signed_error": predicted[name] / phases[name] - 1.0,
                        "error": abs(predicted[name] / phases[name] - 1.0),
                        "imbalance": float(loads.max() / max(loads.mean(), 1e-12)),
                    }
                )
    return rows


def run_single_device(
    device: str = "cuda",
    quick: bool = False,
    rounds: int = 3,
    repeats: int = 2,
    on_step: Optional[Callable[[str], None]] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
    validation: bool = True,
) -> dict[str, Any]:
    """Measure kernels, calibration and (unless `validation` is False) validation layers on this device, interleaved;
    everything a profile and a report need, as raw data."""
    from moesim.validation.calibrate import device_name
    from moesim.validation.kernels import measure_kernels

    step = on_step or (lambda _: None)
    target = torch.device(device)
    calibration, held_out = layer_grids(device, quick)
    held_out = held_out if validation else []
    kernels = measure_kernels(device, quick, step)
    step("calibration and validation layers, interleaved" if held_out else "calibration layers")
    started = time.perf_counter()
    measured = measure_cases(calibration + held_out, target, rounds, repeats, on_progress=on_progress)
    return {
        "device": device_name(target, 1),
        "torch": torch.__version__,
        "quick": quick,
        "rounds": rounds,
        "repeats": repeats,
        "memory_gb": torch.cuda.get_device_properties(target).total_memory / 1e9 if target.type == "cuda" else 0.0,
        "layer_seconds": time.perf_counter() - started,
        "kernels": kernels,
        "calibration": measured[: len(calibration)],
        "validation": measured[len(calibration) :],
    }


def fit_profile(
    device: str,
    kernels: dict[str, Any],
    memory_gb: float,
    cases: list[LayerCase],
    measured: list[dict[str, Any]],
    profile_dir: Path,
) -> tuple[dict[str, Any], Path]:
    """The device's profile, fitted to its kernels and the calibration layers that ran, at
    `profile_dir/<device>.json`."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / f"{device}.json"
    usable = [(case, result) for case, result in zip(cases, measured) if "error" not in result]
    profile = fit_phases(
        base_profile(device, kernels, memory_gb), path, [case for case, _ in usable], [result for _, result in usable]
    )
    return profile, path


def calibrate_single_device(
    device: str = "cuda",
    quick: bool = False,
    rounds: int = 3,
    repeats: int = 2,
    profile_dir: Path = Path("validation/profiles"),
    on_step: Optional[Callable[[str], None]] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> Path:
    """`moesim calibrate --device cuda`: the kernels and the calibration layers alone; the profile's path."""
    raw = run_single_device(device, quick, rounds, repeats, on_step, on_progress, validation=False)
    calibration, _ = layer_grids(device, quick)
    return fit_profile(raw["device"], raw["kernels"], raw["memory_gb"], calibration, raw["calibration"], profile_dir)[1]


def report_from_raw(raw: dict[str, Any], profile_dir: Path) -> tuple[list[dict[str, Any]], Path]:
    """Fit the profile to the raw data's kernels and calibration layers, then compare on its validation layers."""
    calibration, validation = layer_grids("cuda" if "cpu" not in raw["device"] else "cpu", raw["quick"])
    if [c.label for c in calibration] != [r["case"] for r in raw["calibration"]] or [c.label for c in validation] != [
        r["case"] for r in raw["validation"]
    ]:
        raise ValueError("the raw data's layers are not this version's grid; measure again")
    profile, path = fit_profile(
        raw["device"], raw["kernels"], raw["memory_gb"], calibration, raw["calibration"], profile_dir
    )
    usable = [(case, result) for case, result in zip(validation, raw["validation"]) if "error" not in result]
    return comparison_rows([case for case, _ in usable], [result for _, result in usable], profile, path), path
