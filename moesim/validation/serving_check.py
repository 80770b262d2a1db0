"""Serving iterations on one device: real decoder layers measured, moesim's `IterationCost` beside them.

The serving planner prices an engine iteration as the forward pass at the iteration's token count (without its
attention) plus the attention of its prompt chunks at their context and of its decode tokens reading their KV
caches. This check runs that iteration for real: a stack of decoder layers (RMSNorm, fused QKV projection, scaled
dot-product attention over a KV cache, output projection, RMSNorm, the executor's MoE layer), the embedding in
front and the output head on the sampled rows only (each decode token and each prompt's last token), in bf16, for
decode batches at several contexts, whole prompts, and iterations that mix both, as continuous batching makes them.
Each iteration is timed as device work (the host queues it behind a spin kernel), attention and MoE blocks apart.

What it leaves out, and engines do: rotary embeddings (fused into their attention kernels), a paged KV cache
(one contiguous cache a batch here), sampling beyond the argmax. PyTorch's scaled dot-product attention has no
split-KV decode kernel; where a decode batch is too small to fill the GPU it reads the cache more slowly than
FlashInfer or TensorRT-LLM would (the report shows attention apart).

`python -m moesim.validation.serving_check [--quick] [--out validation]` writes <out>/<device>/serving.json and
SERVING.md; `--quick` runs a small model on the CPU to try it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moesim.executor.launch import executor_dtype, layer_for
from moesim.executor.timing import PhaseClock
from moesim.scenario import Scenario, scenario_from_dict
from moesim.serving.iteration import IterationCost
from moesim.validation.calibrate import device_name
from moesim.validation.held_out import SERVING_ITERATIONS
from moesim.validation.serving_cases import CHECK_LAYERS, GPU_CASES, QUICK_CASES, IterationCase, check_scenario, predict
from moesim.validation.serving_check_report import render, shipped_gpu
from moesim.validation.single_device import HOST_AHEAD_CYCLES

REPEATS = 5
HELD_OUT = frozenset(SERVING_ITERATIONS)
"""Iterations drawn before they were measured (`held_out.SERVING_ITERATIONS`): their rows carry `held_out`."""


class DecoderStack:
    """`layers` decoder layers of the scenario's model (GQA attention and the executor's MoE layer), the embedding
    and the output head, with weights drawn on the device."""

    def __init__(self, scenario: Scenario, device: torch.device) -> None:
        model = scenario.model
        self.model, self.device, self.dtype = model, device, executor_dtype(scenario)
        dtype = self.dtype
        self.heads, self.kv_heads = model.num_attention_heads, model.num_key_value_heads or model.num_attention_heads
        self.head_dim = model.attention_head_dim
        hidden, q_width, kv_width = model.hidden_size, self.heads * self.head_dim, self.kv_heads * self.head_dim
        generator = torch.Generator(device=device).manual_seed(scenario.seed)

        def weight(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator, device=device) * shape[0] ** -0.5).to(dtype)

        self.embedding = weight(model.vocab_size, hidden)
        self.head = weight(hidden, model.vocab_size)
        self.qkv = [weight(hidden, q_width + 2 * kv_width) for _ in range(model.num_layers)]
        self.out = [weight(q_width, hidden) for _ in range(model.num_layers)]
        self.moe = []
        for index in range(model.num_layers):
            layer_scenario = scenario_from_dict(scenario.model_dump(mode="json"), [f"seed={scenario.seed + index}"])
            self.moe.append(layer_for(layer_scenario, device))
        self.norm = torch.ones(hidden, device=device, dtype=dtype)

    def caches(self, case: IterationCase) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One KV cache (keys, values) of the decode batch, read by every layer (each layer reads as many bytes as
        its own would)."""
        if not case.decode:
            return None
        shape = (case.decode, self.kv_heads, case.context, self.head_dim)
        return torch.randn(shape, device=self.device, dtype=self.dtype), torch.randn(
            shape, device=self.device, dtype=self.dtype
        )

    def _attention(self, qkv: torch.Tensor, case: IterationCase, cache: Any) -> torch.Tensor:
        q_width, kv_width, d = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        outputs = []
        if case.decode:
            rows = qkv[: case.decode]
            keys, values = cache
            keys[:, :, -1] = rows[:, q_width : q_width + kv_width].view(case.decode, self.kv_heads, d)
            values[:, :, -1] = rows[:, q_width + kv_width :].view(case.decode, self.kv_heads, d)
            # one query a sequence: the heads of a KV group are its queries (no mask), as decode kernels read GQA
            query = rows[:, :q_width].reshape(case.decode, self.kv_heads, self.heads // self.kv_heads, d)
            outputs.append(F.scaled_dot_product_attention(query, keys, values).reshape(case.decode, q_width))
        if case.prompts:
            rows = qkv[case.decode :].view(case.prompts, case.prompt_tokens, -1)

            def split(start: int, width: int, heads: int) -> torch.Tensor:
                return (
                    rows[..., start : start + width].reshape(case.prompts, case.prompt_tokens, heads, d).transpose(1, 2)
                )

            query = split(0, q_width, self.heads)
            keys, values = split(q_width, kv_width, self.kv_heads), split(q_width + kv_width, kv_width, self.kv_heads)
            attended = F.scaled_dot_product_attention(query, keys, values, is_causal=True, enable_gqa=True)
            outputs.append(attended.transpose(1, 2).reshape(case.prefill_tokens, q_width))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def iteration(self, case: IterationCase, cache: Any, token_ids: torch.Tensor, clock: Any) -> torch.Tensor:
        """One engine iteration: embedding, every layer, and the head on the sampled rows."""
        eps = 1e-5
        x = self.embedding[token_ids]
        for index in range(self.model.num_layers):
            with clock.phase("attention"):
                qkv = F.rms_norm(x, (x.shape[-1],), self.norm, eps) @ self.qkv[index]
                x = x + self._attention(qkv, case, cache) @ self.out[index]
            with clock.phase("moe"):
                x = x + self.moe[index](F.rms_norm(x, (x.shape[-1],), self.norm, eps))
        with clock.phase("head"):
            last = torch.arange(case.prompts, device=x.device) * case.prompt_tokens + (case.prompt_tokens - 1)
            rows = torch.cat([torch.arange(case.decode, device=x.device), case.decode + last])
            logits = F.rms_norm(x[rows], (x.shape[-1],), self.norm, eps) @ self.head
            return logits.argmax(-1)


def measure(stack: DecoderStack, case: IterationCase, repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of the iteration and of its attention, MoE and head blocks, as device work."""
    clock = PhaseClock(stack.device)
    cache = stack.caches(case)
    tokens = case.decode + case.prefill_tokens
    generator = torch.Generator(device="cpu").manual_seed(tokens)
    token_ids = torch.randint(0, stack.model.vocab_size, (tokens,), generator=generator).to(stack.device)
    samples: dict[str, list[float]] = {}
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            if stack.device.type == "cuda":
                torch.cuda._sleep(HOST_AHEAD_CYCLES)
            with clock.phase("iteration"):
                stack.iteration(case, cache, token_ids, clock)
            times = clock.read()
            for layer in stack.moe:  # the MoE layers' own phases (router, permute, experts, ...), summed
                for name, seconds in layer.clock.read().items():
                    if name != "span":
                        times[f"moe.{name}"] = times.get(f"moe.{name}", 0.0) + seconds
            if attempt:  # the first run warms the kernels and the allocator
                for name, seconds in times.items():
                    if name != "span":
                        samples.setdefault(name, []).append(seconds)
    del cache
    result: dict[str, Any] = {name: statistics.median(values) for name, values in samples.items()}
    result["expert_rows"] = [layer.last_local_load for layer in stack.moe]  # each layer's rows per expert
    return result


def run_check(
    cases: list[IterationCase], device: torch.device, gpu: str, progress: bool = True, save: Any = None
) -> list[dict]:
    """Measure and predict every case, one model's stack on the device at a time (`save(rows)` after each)."""
    rows: list[dict] = []
    for model in dict.fromkeys(case.model for case in cases):
        scenario = check_scenario(model, gpu)
        cost = IterationCost(scenario)
        stack = DecoderStack(scenario, device)
        for case in [c for c in cases if c.model == model]:
            try:
                measured = measure(stack, case)
            except torch.OutOfMemoryError:
                print(f"{model:14} {case.label:34} does not fit: left out", flush=True)
                torch.cuda.empty_cache()
                continue
            predicted = predict(case, cost)
            row = {"case": asdict(case), "label": case.label, "measured": measured, "predicted": predicted}
            rows.append({**row, "held_out": case in HELD_OUT})
            if save:
                save(rows)
            if progress:
                ratio = predicted["iteration"] / measured["iteration"]
                print(
                    f"{model:14} {case.label:34} {measured['iteration'] * 1e3:9.3f} ms  moesim x{ratio:.2f}", flush=True
                )
        del stack
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model on the CPU, to try the check")
    parser.add_argument("--out", default="validation", help="folder of the device reports")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    name = device_name(device, 1)
    gpu = shipped_gpu(name)
    folder = Path(args.out, name)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"device": name, "predicted_gpu": gpu, "layers": CHECK_LAYERS, "torch": torch.__version__, "rows": []}

    def save(rows: list[dict]) -> None:
        document["rows"] = rows
        (folder / "serving.json").write_text(json.dumps(document, indent=1) + "\n")

    save(run_check(QUICK_CASES if args.quick else GPU_CASES + SERVING_ITERATIONS, device, gpu, save=save))
    (folder / "SERVING.md").write_text(render(document))
    print(render(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
