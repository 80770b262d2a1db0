"""The MoE layers a single-device validation runs: realistic validation shapes, a disjoint calibration grid.

A `LayerCase` is one MoE layer on one device: its shape (hidden size, expert FFN size,
experts, top-k, shared experts), the tokens of one micro-batch, the routing rule and its
capacity factor, a Zipf skew of expert popularity, and whether it runs forward only or
forward and backward. On a GPU the validation shapes are the expert layers of published
models (Mixtral 8x7B, DeepSeek-V3, Qwen3-30B-A3B, OLMoE, DBRX, and a 32-expert top-1
layer in the Switch style) at 1K-32K tokens; the calibration grid uses other hidden
sizes, expert sizes and expert counts (a test checks that no calibration shape is a
validation shape), so a prediction is never fitted to the layer it predicts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional

GATED = "swiglu"


@dataclass(frozen=True)
class LayerShape:
    """The weights of one MoE layer: they stay on the device across the cases that share them."""

    name: str
    hidden: int
    ffn: int
    experts: int
    shared: int = 0  # shared experts, each of `ffn`

    @property
    def weight_bytes(self) -> int:
        """bf16 bytes of the layer's weights (router, routed experts, shared experts)."""
        return 2 * (self.experts * self.hidden + 3 * self.hidden * self.ffn * (self.experts + self.shared))


@dataclass(frozen=True)
class LayerCase:
    """One measured layer."""

    shape: LayerShape
    top_k: int
    tokens: int
    rule: str = "top_k"
    capacity_factor: Optional[float] = None
    skew: float = 0.0
    training: bool = False
    groups: Optional[tuple[int, int]] = None  # (num_expert_groups, topk_groups) of a group-limited rule

    @property
    def rule_label(self) -> str:
        factor = "dropless" if self.capacity_factor is None else f"cf {self.capacity_factor:g}"
        return f"{self.rule} {factor}"

    @property
    def label(self) -> str:
        skew = f" skew {self.skew:g}" if self.skew else ""
        mode = " fwd+bwd" if self.training else ""
        return f"{self.shape.name} T={self.tokens} k={self.top_k} {self.rule_label}{skew}{mode}"

    @property
    def renormalises(self) -> bool:
        """Whether the weights are renormalised (top-k as Mixtral and Qwen3 do, and DeepSeek-V3's rule)."""
        return self.rule in ("top_k", "bias_balanced")

    def router_options(self) -> dict[str, Any]:
        """`make_router` options: the rule of the model the shape comes from (weights renormalised, groups)."""
        options: dict[str, Any] = {
            "capacity_factor": self.capacity_factor,
            "num_shared_experts": self.shape.shared,
            "normalize_weights": self.renormalises,
        }
        if self.rule == "bias_balanced":
            groups, per_token = self.groups or (1, 1)
            options.update(num_expert_groups=groups, topk_groups=per_token)
        return options

    def scenario_document(self, gpu: dict[str, Any], profile_path: str) -> dict[str, Any]:
        """A one-layer, one-device scenario of this case for the simulator, on the profiled device."""
        shape = self.shape
        routing: dict[str, Any] = {
            "strategy": self.rule,
            "capacity_factor": self.capacity_factor,
            "normalize_weights": self.renormalises,
        }
        model: dict[str, Any] = {
            "preset": "tiny-moe",
            "num_layers": 1,
            "hidden_size": shape.hidden,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "moe_intermediate_size": shape.ffn,
            "intermediate_size": shape.ffn,
            "num_experts": shape.experts,
            "top_k": self.top_k,
            "num_shared_experts": shape.shared,
            "expert_ffn_activation": GATED,
            "vocab_size": 256,
        }
        if self.rule == "bias_balanced":
            groups, per_token = self.groups or (1, 1)
            model.update(router_score_function="sigmoid", router_bias=True, router_group_score="top2_sum")
            routing.update(num_expert_groups=groups, topk_groups=per_token)
        return {
            "name": self.label,
            "model": model,
            "cluster": {"num_nodes": 1, "gpus_per_node": 1, "gpu": gpu},
            "parallelism": {"ep_size": 1},
            "workload": {
                "mode": "training" if self.training else "inference",
                "micro_batch_size": 1,
                "seq_len": self.tokens,
                "expert_popularity_skew": self.skew,
            },
            "routing": routing,
            "simulation": {
                "network_mode": "fast",
                "max_routed_tokens": self.tokens,
                "overlap_shared_experts": False,
                "cost_profile": profile_path,
            },
        }


MIXTRAL = LayerShape("mixtral-8x7b", 4096, 14336, 8)
DEEPSEEK_V3 = LayerShape("deepseek-v3", 7168, 2048, 256, shared=1)
QWEN3 = LayerShape("qwen3-30b-a3b", 2048, 768, 128)
OLMOE = LayerShape("olmoe-1b-7b", 2048, 1024, 64)
DBRX = LayerShape("dbrx", 6144, 10752, 16)
TOP1 = LayerShape("switch-style-32e", 4096, 8192, 32)

VALIDATION_MODELS: tuple[tuple[LayerShape, int, str, Optional[tuple[int, int]]], ...] = (
    (MIXTRAL, 2, "top_k", None),
    (DEEPSEEK_V3, 8, "bias_balanced", (8, 4)),
    (QWEN3, 8, "top_k", None),
    (OLMOE, 8, "top_k", None),
    (DBRX, 4, "top_k", None),
    (TOP1, 1, "top_k", None),
)
"""(shape, top-k, the model's own rule, its groups) of every validation layer."""

CALIBRATION_MODELS: tuple[tuple[LayerShape, int, str, Optional[tuple[int, int]]], ...] = (
    (LayerShape("cal-3072x6144x16", 3072, 6144, 16), 2, "top_k", None),
    (LayerShape("cal-2560x1408x96", 2560, 1408, 96), 6, "top_k", None),
    (LayerShape("cal-5120x1536x160", 5120, 1536, 160, shared=2), 6, "bias_balanced", (8, 3)),
    (LayerShape("cal-3072x2560x48", 3072, 2560, 48), 4, "top_k", None),
    (LayerShape("cal-2560x10240x8", 2560, 10240, 8), 1, "top_k", None),
    (LayerShape("cal-5120x640x192", 5120, 640, 192, shared=1), 8, "bias_balanced", (8, 4)),
)


def _cases(
    models: Any,
    tokens: tuple[int, ...],
    training_tokens: tuple[int, ...],
    skews: tuple[float, ...],
    variant_tokens: tuple[int, ...],
    variants: tuple[tuple[str, float], ...],
) -> list[LayerCase]:
    cases = []
    for (shape, top_k, rule, groups), count, skew in itertools.product(models, tokens, skews):
        cases.append(LayerCase(shape, top_k, count, rule, None, skew, False, groups))
    for (shape, top_k, rule, groups), count in itertools.product(models, training_tokens):
        cases.append(LayerCase(shape, top_k, count, rule, None, 0.0, True, groups))
    for (shape, top_k, _, _), count, (rule, factor) in itertools.product(models[:2], variant_tokens, variants):
        cases.append(LayerCase(shape, top_k, count, rule, factor, 0.0, False, None))
    return cases


def layer_grids(device: str, quick: bool = False) -> tuple[list[LayerCase], list[LayerCase]]:
    """(calibration, validation) cases for a device; on the CPU small stand-ins of the same structure."""
    if quick or device != "cuda":
        small = (
            (LayerShape("cpu-64x96x8", 64, 96, 8), 2, "top_k", None),
            (LayerShape("cpu-96x64x16", 96, 64, 16, 1), 4, "bias_balanced", (4, 2)),
        )
        held_out = (
            (LayerShape("cpu-80x128x8", 80, 128, 8), 2, "top_k", None),
            (LayerShape("cpu-112x48x16", 112, 48, 16, 1), 4, "bias_balanced", (4, 2)),
        )
        sizes = (
            ((128, 512), (256,), (0.0, 1.0), (256,)) if quick else ((256, 1024, 2048), (512, 1024), (0.0, 1.2), (1024,))
        )
        variants = (("top_k", 1.25), ("expert_choice", 1.0))
        return (
            _cases(small, sizes[0], sizes[1], sizes[2], sizes[3], variants),
            _cases(held_out, tuple(t + t // 2 for t in sizes[0]), sizes[1], sizes[2], sizes[3], variants),
        )
    calibration = _cases(
        CALIBRATION_MODELS,
        (2048, 8192, 24576),
        (2048, 8192),
        (0.0, 1.0),
        (2048, 8192, 24576),
        (("top_k", 1.5), ("expert_choice", 1.25)),
    )
    validation = _cases(
        VALIDATION_MODELS,
        (1024, 4096, 16384),
        (4096, 16384),
        (0.0, 1.2),
        (4096, 16384),
        (("top_k", 1.25), ("expert_choice", 1.0)),
    )
    validation += [
        LayerCase(shape, top_k, 32768, rule, None, 0.0, False, groups)
        for shape, top_k, rule, groups in VALIDATION_MODELS
        if shape.weight_bytes < 4e9
    ]
    return calibration, validation
