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

import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from moesim.executor.launch import skewed_tokens
from moesim.executor.layer import MoELayer
from moesim.routing import make_router
from moesim.validation.calibrate import device_name
from moesim.validation.kernels import measure_kernels
from moesim.validation.layer_cases import GATED, LayerCase, LayerShape, layer_grids
from moesim.validation.single_device_fit import (  # noqa: F401  (re-exported: the report and the CLI use them)
    FORWARD_PHASES,
    fit_profile,
    report_from_raw,
)

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
    return make_router(case.rule, case.shape.experts, case.top_k, **case.router_options())


def _inputs(
    case: LayerCase, layer: Any, index: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
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
