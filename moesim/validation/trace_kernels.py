"""A PyTorch-profiler trace's GPU kernels, by class and by stream: what a measured step spends its time on.

DeepSeek's training profile (github.com/deepseek-ai/profile-data, `train.json`: one forward and one backward chunk of
four MoE layers each, overlapped by DualPipe on H800, EP 64, TP 1, 4K sequence, balanced routing) is the one public
kernel-level trace of a whole MoE training step; `moesim.validation.train_pair` holds moesim's prediction of the same
chunk pair against it. The trace is 3.1 MB with no licence file, so the repository keeps what this module reads from it
(every kernel name's count and time by stream, `validation/deepseek-profile-data/train_kernels.json`), written by

    python -m moesim.validation.trace_kernels train.json \
        --out validation/deepseek-profile-data/train_kernels.json --source '...'

Kernel classes (first matching rule wins, names lower-cased), each a cost moesim models as a phase of its own:
communication (DeepEP's notify, dispatch, combine and layout kernels), attention (FlashAttention forward and backward
with its pre- and post-processing), gemm (dense and grouped GEMMs, bf16 and FP8), fp8_cast (quantisation, cast-back
and transpose kernels), norm, rope, activation (SwiGLU, its fused casts included), router (top-k, sigmoid, the
auxiliary-loss and group kernels), permutation (MoE layout: the expert mapping, the expansion into the experts' layout
and the reduction of a token's copies), other (element-wise, copies, fills, reductions, memcpy and memset).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

KERNEL_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
CLASS_RULES: tuple[tuple[str, str], ...] = (
    ("communication", r"dpsk::ep::|deep_ep|nccl"),
    ("attention", r"flash"),
    ("activation", r"swiglu|silu"),
    ("fp8_cast", r"cast|transpose"),
    ("gemm", r"gemm"),
    ("norm", r"layer_norm|rms_?norm"),
    ("rope", r"rotary|rope"),
    ("router", r"topk|sigmoid|aux_fi|unique_group"),
    ("permutation", r"fused_mapping|count_expert|expand_to_fused|reduce_fused|permute"),
)
CLASSES = tuple(name for name, _ in CLASS_RULES) + ("other",)
COMPUTE_CLASSES = tuple(name for name in CLASSES if name != "communication")


def kernel_class(name: str) -> str:
    """The class of a kernel by its name (`CLASS_RULES`, first match; else `other`)."""
    lowered = name.lower()
    for label, pattern in CLASS_RULES:
        if re.search(pattern, lowered):
            return label
    return "other"


def short_name(name: str) -> str:
    """A kernel's name without its return type, arguments and template arguments past 80 characters."""
    name = name.removeprefix("void ").split("(")[0].strip() or name.strip() or "(unnamed)"
    return name[:80]


def summarise(events: Iterable[dict[str, Any]], source: str) -> dict[str, Any]:
    """Each stream's busy time and span, its time by kernel class, and every kernel name's count and time (ms)."""
    kernels = [event for event in events if event.get("ph") == "X" and event.get("cat") in KERNEL_CATEGORIES]
    if not kernels:
        raise ValueError("no GPU kernels in the trace (events with cat 'kernel', 'gpu_memcpy' or 'gpu_memset')")
    by_name: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    streams: dict[str, dict[str, Any]] = {}
    for event in kernels:
        stream, start, took = str(event["tid"]), float(event["ts"]), float(event["dur"])
        entry = streams.setdefault(stream, {"busy_ms": 0.0, "start": start, "end": start + took, "kernels": 0})
        entry["busy_ms"] += took / 1e3
        entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], start + took)
        entry["kernels"] += 1
        totals = by_name[(stream, short_name(event["name"]))]
        totals[0] += 1
        totals[1] += took / 1e3
    start = min(entry["start"] for entry in streams.values())
    end = max(entry["end"] for entry in streams.values())
    classes: dict[str, dict[str, float]] = {stream: dict.fromkeys(CLASSES, 0.0) for stream in streams}
    rows = []
    for (stream, name), (count, took) in sorted(by_name.items(), key=lambda item: -item[1][1]):
        label = kernel_class(name)
        classes[stream][label] += took
        rows.append([stream, label, name, int(count), round(took, 4)])
    for stream, entry in streams.items():
        entry["span_ms"] = (entry.pop("end") - entry.pop("start")) / 1e3
        entry["role"] = "communication" if classes[stream]["communication"] > entry["busy_ms"] / 2 else "compute"
        entry["busy_ms"] = round(entry["busy_ms"], 4)
        entry["span_ms"] = round(entry["span_ms"], 4)
    return {
        "source": source,
        "span_ms": round((end - start) / 1e3, 4),
        "streams": streams,
        "classes": {stream: {k: round(v, 4) for k, v in values.items()} for stream, values in classes.items()},
        "kernels": rows,
    }


def by_role(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Time by kernel class (ms) on the compute streams together and on the communication streams together."""
    totals = {"compute": dict.fromkeys(CLASSES, 0.0), "communication": dict.fromkeys(CLASSES, 0.0)}
    for stream, values in summary["classes"].items():
        role = summary["streams"][stream]["role"]
        for label, took in values.items():
            totals[role][label] += took
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="a PyTorch-profiler trace (Chrome trace JSON)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the summary (JSON)")
    parser.add_argument("--source", default="", help="where the trace comes from (written into the summary)")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.trace.read_text())
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {args.trace}: {error}\n")
    events = document["traceEvents"] if isinstance(document, dict) else document
    summary = summarise(events, args.source or str(args.trace))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}: {len(summary['kernels'])} kernel names on {len(summary['streams'])} streams")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
