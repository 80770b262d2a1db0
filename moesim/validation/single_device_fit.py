"""The single-device validation's fit and comparison: a profile fitted to the measured kernels and calibration
layers, and the simulator's prediction of every validation layer from it (`single_device` measures; this fits
and compares, also from a committed `raw.json` without a GPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from moesim.cluster.topology import Topology
from moesim.cost import model_from_profile
from moesim.cost.model import CostModel
from moesim.cost.phase_features import DEVICE_PHASE_FEATURES, PhaseWork, feature_vector, router_fit_key
from moesim.scenario import scenario_from_dict
from moesim.sim.collectives import Traffic
from moesim.sim.phase import moe_work
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import LayerRouting
from moesim.validation.kernels import dense_model_from, dense_peak, grouped_model_from
from moesim.validation.layer_cases import LayerCase, layer_grids
from moesim.validation.timing import nonnegative_relative_fit

FORWARD_PHASES = ("router", "permute", "experts", "unpermute", "shared_experts")


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
    cost = model_from_profile(path)
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
        cost or model_from_profile(path),
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
    cost = model_from_profile(path)
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
