"""Names of the routing rules a scenario may ask for (implemented under `moesim.routing`)."""

from __future__ import annotations

from typing import Literal

RoutingStrategy = Literal[
    "top_k",  # token choice: each token picks its k best experts (Switch, GShard, Mixtral)
    "noisy_top_k",  # top-k over logits plus trained Gaussian noise (Shazeer et al. 2017)
    "gshard_top2",  # top-1 plus a second expert kept with probability proportional to its weight
    "expert_choice",  # each expert picks its top-c tokens (Zhou et al. 2022)
    "base",  # balanced linear assignment, solved exactly (Lewis et al. 2021)
    "sinkhorn",  # approximately balanced assignment by Sinkhorn iterations (S-BASE)
    "hash",  # fixed hash of the token id (Roller et al. 2021)
    "balanced_hash",  # hash that spreads frequent token ids evenly
    "bias_balanced",  # DeepSeek-V3 auxiliary-loss-free balancing with a per-expert bias
    "group_limited",  # DeepSeek-V2/V3 device/node-limited routing: top groups first, then top-k
    "two_level",  # NLLB-style gate between the dense path / expert groups, then experts
    "balanced",  # forced balance: round-robin over experts (Megatron's --moe-router-force-load-balancing)
]

ROUTING_STRATEGIES: tuple[str, ...] = RoutingStrategy.__args__  # type: ignore[attr-defined]

SCORE_FUNCTION_RULES = frozenset({"top_k", "noisy_top_k", "expert_choice", "group_limited", "bias_balanced"})
"""Rules that take a score function (softmax or sigmoid); the others define their own."""

SCORE_FREE_RULES = frozenset({"hash", "balanced_hash", "balanced"})
"""Rules that ignore the scores' values (so no score convention concerns them)."""

GROUP_RULES = frozenset({"group_limited", "bias_balanced"})
"""Rules that restrict a token to its best expert groups, scored by the model's group score."""

BIAS_RULES = frozenset({"bias_balanced"})
"""Rules that keep a per-expert correction bias for the choice (DeepSeek-V3)."""


def unhonoured_settings(
    strategy: str, score_function: str, num_expert_groups: int | None, topk_groups: int | None, correction_bias: bool
) -> list[str]:
    """The router settings of a model or scenario that `strategy` cannot honour, each with its fix.

    Weight conventions (renormalised top-k weights, routed scaling) are honoured by every
    rule; these are the ones that decide which experts are chosen. An empty list: the rule
    honours them all.
    """
    if strategy == "balanced":  # forced balance replaces the model's routing on purpose (a benchmark setting)
        return []
    problems = []
    if score_function != "softmax" and strategy not in SCORE_FUNCTION_RULES | SCORE_FREE_RULES:
        problems.append(
            f"{score_function} scores (set routing.score_function=softmax, or use one of "
            f"{', '.join(sorted(SCORE_FUNCTION_RULES))})"
        )
    if num_expert_groups and topk_groups and topk_groups < num_expert_groups and strategy not in GROUP_RULES:
        problems.append(
            f"expert groups (num_expert_groups {num_expert_groups}, topk_groups {topk_groups}; "
            f"set routing.num_expert_groups=1, or use {' or '.join(sorted(GROUP_RULES))})"
        )
    if correction_bias and strategy not in BIAS_RULES:
        problems.append(
            f"the correction bias (model.router_bias; set model.router_bias=false, or use "
            f"{' or '.join(sorted(BIAS_RULES))})"
        )
    return problems
