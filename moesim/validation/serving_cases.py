"""The serving check's cases and what moesim predicts for them, without torch: the iterations measured
(`IterationCase`, the GPU's and a quick CPU trial's), the scenario a case is predicted with, and the prediction.
`serving_check.py` measures them on a device, `serving_check_report.py` compares again from the saved
measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.phases import PhaseBuilder

CHECK_LAYERS = 4
"""Decoder layers in the measured stack (the predicted scenario has as many): enough that per-layer costs dominate
the embedding and head, few enough that the largest KV caches fit beside the weights."""


@dataclass(frozen=True)
class IterationCase:
    """One engine iteration: `decode` sequences each reading `context` cached tokens, and `prompts` whole prompts
    of `prompt_tokens` tokens each (causal)."""

    model: str
    decode: int = 0
    context: int = 0
    prompts: int = 0
    prompt_tokens: int = 0

    @property
    def prefill_tokens(self) -> int:
        return self.prompts * self.prompt_tokens

    @property
    def label(self) -> str:
        parts = []
        if self.decode:
            parts.append(f"{self.decode} decode @ {self.context}")
        if self.prompts:
            parts.append(f"{self.prompts} x {self.prompt_tokens} prompt")
        return " + ".join(parts)


GPU_CASES = [
    IterationCase(model, **shape)
    for model in ("mixtral-8x7b", "qwen3-30b-a3b")
    for shape in (
        dict(decode=1, context=512),
        dict(decode=4, context=512),
        dict(decode=16, context=512),
        dict(decode=32, context=512),
        dict(decode=64, context=512),
        dict(decode=128, context=512),
        dict(decode=256, context=512),
        dict(decode=512, context=512),
        dict(decode=896, context=512),
        dict(decode=64, context=4096),
        dict(decode=256, context=2048),
        dict(decode=32, context=8192),
        dict(prompts=1, prompt_tokens=512),
        dict(prompts=1, prompt_tokens=2048),
        dict(prompts=1, prompt_tokens=8192),
        dict(prompts=16, prompt_tokens=512),
        dict(prompts=32, prompt_tokens=512),
        dict(decode=256, context=512, prompts=8, prompt_tokens=512),
        dict(decode=512, context=1024, prompts=1, prompt_tokens=4096),
    )
]
QUICK_CASES = [
    IterationCase("tiny-moe", decode=8, context=128),
    IterationCase("tiny-moe", prompts=2, prompt_tokens=64),
    IterationCase("tiny-moe", decode=4, context=64, prompts=1, prompt_tokens=32),
]


def check_scenario(model: str, gpu: str, layers: int = CHECK_LAYERS, token_budget: int = 16384) -> Scenario:
    """The scenario moesim predicts a case with: the model cut to `layers` layers on one `gpu`, bf16, the
    executor's eager MoE kernels and decoder layer, one engine without two-batch overlap."""
    document = {
        "name": f"serving-check-{model}",
        "seed": 0,
        "model": model,
        "cluster": {"num_nodes": 1, "gpus_per_node": 1, "gpu": gpu},
        "parallelism": {"tp_size": 1, "ep_size": 1},
        "workload": {"mode": "inference", "micro_batch_size": 1, "seq_len": 2048},
        "routing": {"strategy": "top_k", "capacity_factor": None},
        "simulation": {"moe_kernels": "eager"},
        "serving": {"token_budget": token_budget},
    }
    # the executor's decoder layer has no per-head query and key norm (Qwen3's `qk_norm`): the layers measured ran
    # none, so the prediction charges none
    return scenario_from_dict(document, [f"model.num_layers={layers}", "model.qk_norm=false"])


def predict(case: IterationCase, cost: Any) -> dict[str, float]:
    """moesim's seconds for the iteration by an `IterationCost`, and its attention blocks' (prompt tokens attend
    to half their prompt on average, as the engine passes them). moesim's attention holds a layer's four norm and
    residual-add kernels; the stack times the second pair with the MoE block, so half of them move there."""
    prefill_context = case.prompt_tokens / 2
    sampled = case.decode + case.prompts
    total = cost.seconds(case.prefill_tokens, prefill_context, case.decode, case.context, sampled=sampled)
    attention = cost.attention_seconds(case.prefill_tokens, prefill_context, case.decode, case.context)
    tokens = case.decode + case.prefill_tokens
    forward = cost.forward
    builder = PhaseBuilder(forward.scenario, forward.plan, forward.cost, forward.topology, tokens, 1, True)
    norms = sum(builder.attention_parts(layer)["norms"] for layer in cost.plan.layers)
    return {"iteration": total, "attention": attention - norms / 2}
