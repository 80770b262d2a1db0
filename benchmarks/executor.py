"""The executor's speed against bare kernels, measured side by side in one run on whatever device is here.

    python benchmarks/executor.py                  # GPU: model sizes; CPU: the same layers scaled down
    python benchmarks/executor.py --out FILE.json  # also the figures as JSON

For Mixtral-8x7B-, DeepSeek-V3- and Qwen3-30B-A3B-shaped MoE layers (bf16 on a GPU, fp32
on the CPU), 4,096 tokens routed by each model's own rule with a Zipf-skewed popularity (skew 0.5):
* the executor's experts phase (inside its layer's forward, device-timed) against a bare
  SwiGLU FFN of grouped GEMMs (`torch._grouped_mm` up, silu x up, grouped down) on the
  same rows per expert; target on a GPU: at most 1.2x;
* every routing rule on the layer's router scores against a bare `torch.topk` on them;
  target: at most 3x (BASE, an exact solver on the host, excepted). On a GPU twice: the
  wall time of a call from an idle device (CUDA events: a rule of many small kernels is
  bound by their launches), and the device time of its kernels alone (the profiler's sum
  over 20 calls), which is what a call costs when the host runs ahead of the GPU, as in a
  whole model. A third figure replays the rule captured in a CUDA graph (the launches
  recorded once): the wall time of a rule whose shapes and control never depend on the
  data, and the proof that it is so (a rule that waits for the device cannot be captured).
Times are medians of device-timed runs (CUDA events on a GPU), interleaved over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesim.executor.launch import skewed_tokens  # noqa: E402
from moesim.executor.layer import MoELayer, activate  # noqa: E402
from moesim.routing import RULES, make_router  # noqa: E402
from moesim.validation.timing import interleaved_samples  # noqa: E402

LAYERS = (  # name, hidden, expert ffn, experts, top-k, the model's rule options
    ("mixtral-8x7b", 4096, 14336, 8, 2, {"normalize_weights": True}),
    ("deepseek-v3", 7168, 2048, 256, 8, {"rule": "bias_balanced", "num_expert_groups": 8, "topk_groups": 4}),
    ("qwen3-30b-a3b", 2048, 768, 128, 8, {"normalize_weights": True}),
)


def options_for(rule: str, experts: int) -> dict[str, Any]:
    if rule in ("group_limited", "bias_balanced", "two_level"):
        return {"num_expert_groups": 8 if experts % 8 == 0 else 1, "topk_groups": 4 if experts % 8 == 0 else 1}
    return {}


def median_seconds(tasks: dict[str, Any], device: torch.device, rounds: int, repeats: int) -> dict[str, float]:
    synchronize = torch.cuda.synchronize if device.type == "cuda" else None
    samples = interleaved_samples(tasks, rounds, repeats, synchronize, device=device)
    return {key: statistics.median(values) for key, values in samples.items()}


def kernel_seconds(work: Any, calls: int = 20) -> float:
    """Device time of the kernels one call of `work` launches (CUDA profiler), averaged over `calls`."""
    from torch.profiler import ProfilerActivity, profile

    work()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            work()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()) / calls / 1e6


def graph_seconds(work: Any, replays: int = 20) -> float | str:
    """Wall time of one call replayed from a CUDA graph, or why it could not be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            work()
            work()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            work()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / replays / 1e3
    except RuntimeError as error:  # the capture was refused: say why, keep the benchmark going
        torch.cuda.synchronize()
        return str(error).splitlines()[0][:80]


def bench_layer(
    name: str,
    hidden: int,
    ffn: int,
    experts: int,
    top_k: int,
    options: dict[str, Any],
    tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    rounds: int,
    repeats: int,
) -> dict[str, Any]:
    options = dict(options)
    rule = options.pop("rule", "top_k")
    layer = MoELayer(
        hidden, ffn, experts, make_router(rule, experts, top_k, **options), seed=1, dtype=dtype, device=device
    )
    generator = torch.Generator(device=device).manual_seed(2)
    x = skewed_tokens(
        torch.randn(tokens, hidden, generator=generator, device=device).to(dtype), layer.router_weight, 0.5
    )
    with torch.no_grad():
        layer(x)
        layer.clock.read()
        counts = layer.last_local_counts.clone()
        rows = torch.randn(int(counts.sum()), hidden, generator=generator, device=device).to(dtype)
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        up, down = layer.expert_up.detach(), layer.expert_down.detach()

        def bare_ffn() -> Any:
            if device.type != "cuda":  # no grouped kernel on the CPU: the per-expert matmuls are the floor there
                sizes = counts.tolist()
                return torch.cat(
                    [
                        activate(chunk @ up[e], "swiglu", ffn) @ down[e]
                        for e, chunk in enumerate(torch.split(rows, sizes))
                        if chunk.shape[0]
                    ]
                )
            return torch._grouped_mm(
                activate(torch._grouped_mm(rows, up, offs=offsets), "swiglu", ffn), down, offs=offsets
            )

        experts_phase = []
        for _ in range(rounds * repeats):
            layer(x)
            experts_phase.append(layer.clock.read()["experts"])
        bare = median_seconds({"bare": bare_ffn}, device, rounds, repeats)["bare"]
        logits = (x @ layer.router_weight.t()).float()
        token_ids = torch.randint(0, 32000, (tokens,), generator=generator, device=device)
        tasks: dict[str, Any] = {"torch.topk": lambda: torch.topk(logits, top_k, dim=-1)}
        for candidate in RULES:
            if candidate == "gshard_top2" and top_k != 2:
                continue
            if candidate == "two_level":
                continue  # its first gate needs its own score column; group routing is covered by the rules above
            router = make_router(candidate, experts, top_k, **options_for(candidate, experts))
            router.route(logits, token_ids)  # a balanced-hash table is built once
            tasks[candidate] = lambda router=router: router.route(logits, token_ids)
            if candidate == "top_k":
                capped = make_router("top_k", experts, top_k, capacity_factor=1.25)
                tasks["top_k cf 1.25"] = lambda router=capped: router.route(logits, token_ids)
        routers = median_seconds(tasks, device, rounds, repeats)
        on_gpu = device.type == "cuda"
        kernels = {rule: kernel_seconds(task) for rule, task in tasks.items() if rule != "base"} if on_gpu else {}
        graphs = {rule: graph_seconds(task) for rule, task in tasks.items() if rule != "base"} if on_gpu else {}
    load = counts.double()
    return {
        "layer": name,
        "hidden": hidden,
        "ffn": ffn,
        "experts": experts,
        "top_k": top_k,
        "tokens": tokens,
        "kernel": layer.experts_kernel,
        "busiest_over_mean": float(load.max() / load.mean()),
        "experts_phase_s": statistics.median(experts_phase),
        "bare_ffn_s": bare,
        "routers_s": routers,
        "router_kernels_s": kernels,
        "router_graph_s": graphs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale", type=int, default=None, help="Divide hidden and FFN sizes (default: 1 on a GPU, 8 on the CPU)."
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    scale = args.scale or (1 if device.type == "cuda" else 8)
    tokens = args.tokens if device.type == "cuda" else args.tokens // 4
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"Executor against bare kernels on {name} ({str(dtype).replace('torch.', '')}), {tokens:,} tokens, "
        f"sizes / {scale}"
    )
    results = []
    for layer_name, hidden, ffn, experts, top_k, options in LAYERS:
        result = bench_layer(
            layer_name,
            hidden // scale,
            ffn // scale,
            experts,
            top_k,
            options,
            tokens,
            device,
            dtype,
            args.rounds,
            args.repeats,
        )
        results.append(result)
        ratio = result["experts_phase_s"] / result["bare_ffn_s"]
        print(
            f"\n{layer_name}: hidden {result['hidden']}, ffn {result['ffn']}, {experts} experts, top-{top_k}, "
            f"busiest expert {result['busiest_over_mean']:.2f}x the mean ({result['kernel']} kernel)"
        )
        print(
            f"  {'experts phase':28s} {result['experts_phase_s'] * 1e3:9.3f} ms   bare grouped FFN "
            f"{result['bare_ffn_s'] * 1e3:9.3f} ms   ratio {ratio:5.2f} (target <= 1.2 on a GPU)"
        )
        floor = result["routers_s"]["torch.topk"]
        kernels, graphs = result["router_kernels_s"], result["router_graph_s"]
        if kernels:
            print(f"  {'router (ms; x torch.topk)':26s} {'eager call':>16s} {'its kernels':>16s} {'CUDA graph':>16s}")
        for rule, seconds in result["routers_s"].items():
            columns = f"{seconds * 1e3:8.3f} x{seconds / floor:6.2f}"
            if rule in kernels:
                columns += f" {kernels[rule] * 1e3:8.3f} x{kernels[rule] / kernels['torch.topk']:6.2f}"
            if rule in graphs:
                replay, floor_replay = graphs[rule], graphs["torch.topk"]
                columns += (
                    f" {replay * 1e3:8.3f} x{replay / floor_replay:6.2f}"
                    if isinstance(replay, float) and isinstance(floor_replay, float)
                    else f"  not captured: {replay}"
                )
            note = "" if rule != "base" else "  (exact solver on the host; no target)"
            print(f"  {rule:26s} {columns}{note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "dtype": str(dtype), "results": results}, indent=1))


if __name__ == "__main__":
    main()
