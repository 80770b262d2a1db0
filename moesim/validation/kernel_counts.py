"""How many kernels each phase of the executor's MoE layer puts on the device, counted with PyTorch's profiler.

In a busy stream every kernel costs its launch and tail (`KERNEL_LAUNCH_S` in the shipped profiles, ~4 us: the
smallest GEMM of the H100's stream timings takes 4.3 us), so at decode's few tokens a phase costs about its kernel
count times that. The shipped profiles had the counts by reading the code (router 6, permute 5, unpermute 3); this
counts them: one forward of the layer under the profiler, every kernel, memset and device copy assigned to the
phase whose range (`moe.<phase>`, `MoELayer.phase`) holds the host call that launched it.

`python -m moesim.validation.kernel_counts [--out validation]` writes <out>/<device>/kernel_counts.json (on a
CUDA GPU; elsewhere there are no kernels to count).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from moesim.executor.launch import layer_for
from moesim.validation.calibrate import device_name
from moesim.validation.serving_cases import check_scenario

DEVICE_OPS = ("kernel", "gpu_memset", "gpu_memcpy")
"""Trace categories of work on the device."""
CASES = (("mixtral-8x7b", 16), ("mixtral-8x7b", 1024), ("qwen3-30b-a3b", 16), ("qwen3-30b-a3b", 1024))
"""(model, tokens) of the layers counted: decode's few tokens and a prompt chunk's many."""


def phase_counts(trace_events: list[dict[str, Any]]) -> dict[str, int]:
    """Device operations by phase, from a Chrome trace's events: each device operation is matched to the host
    call that launched it (the same `correlation`), and counted in the `moe.<phase>` range around that call."""
    ranges = [
        (event["name"][len("moe.") :], event["ts"], event["ts"] + event["dur"])
        for event in trace_events
        if event.get("cat") == "user_annotation" and str(event.get("name", "")).startswith("moe.")
    ]
    launched = {
        event["args"]["correlation"]: event["ts"]
        for event in trace_events
        if event.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in event.get("args", {})
    }
    counts = {name: 0 for name, _, _ in ranges}
    for event in trace_events:
        if event.get("cat") not in DEVICE_OPS:
            continue
        when = launched.get(event.get("args", {}).get("correlation"))
        for name, start, end in ranges:
            if when is not None and start <= when <= end:
                counts[name] += 1
                break
    return counts


def count_layer(model: str, tokens: int, device: torch.device) -> dict[str, int]:
    """Kernels by phase in one forward of `model`'s MoE layer over `tokens` tokens (after two untimed ones)."""
    layer = layer_for(check_scenario(model, "H100-SXM", layers=1), device)
    x = torch.randn(tokens, layer.hidden_size, device=device, dtype=layer.expert_up.dtype)
    with torch.inference_mode():
        for _ in range(2):
            layer(x)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            layer(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    layer.clock.read()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "trace.json")
        profiler.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    counts = phase_counts(events)
    if device.type == "cuda" and not any(counts.values()):  # say what the trace held instead
        print("no device operations matched; trace categories:", sorted({str(e.get("cat")) for e in events}))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="validation", help="folder of the device reports")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = device_name(device, 1)
    results = []
    for model, tokens in CASES:
        counts = count_layer(model, tokens, device)
        results.append({"model": model, "tokens": tokens, "kernels": counts})
        print(f"{model:14} {tokens:6} tokens: {counts}", flush=True)
    folder = Path(args.out, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel_counts.json").write_text(json.dumps({"device": name, "layers": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
