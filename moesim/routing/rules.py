"""The routing rules moesim has, in one torch-free table: a rule's name, its class, what it honours, its options.

Everything that lists rules reads this table: the scenario's `routing.strategy` type (`names.RoutingStrategy`),
the capability sets that say which model settings a rule can honour (`names.unhonoured_settings`), the options a
scenario may pass (`rule_options`, checked when a scenario loads, without importing torch), and the registry that
builds a router (`registry.make_router`, which imports the class named here). A new rule is one row here and one
class; `tests/test_routers.py` holds every row's options to its class's signature.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMON_OPTIONS = ("drop_policy", "num_shared_experts", "seed", "normalize_weights", "routed_scaling_factor")
"""Options every rule takes (`Router.__init__`'s), after a rule's own."""


@dataclass(frozen=True)
class Rule:
    """One routing rule."""

    name: str
    """The name a scenario's `routing.strategy` and `make_router` use."""
    where: str
    """The class that implements it, as `module:Class` under `moesim.routing` (imported by the registry only)."""
    summary: str
    """What it does, with its source."""
    own_options: tuple[str, ...] = ()
    """Keyword options of its own, besides `COMMON_OPTIONS` (and num_experts, top_k, capacity_factor)."""
    score_function: bool = False
    """It takes a score function (softmax or sigmoid); the others define their own."""
    score_free: bool = False
    """It ignores the scores' values, so no score convention concerns it."""
    groups: bool = False
    """It restricts a token to its best expert groups, scored by the model's group score."""
    bias: bool = False
    """It keeps a per-expert correction bias for the choice (DeepSeek-V3)."""

    @property
    def options(self) -> tuple[str, ...]:
        """Every keyword option the rule accepts, its own first."""
        return self.own_options + tuple(name for name in COMMON_OPTIONS if name not in self.own_options)


RULE_TABLE: tuple[Rule, ...] = (
    Rule("top_k", "topk:TopKRouter", "token choice: each token picks its k best experts (Switch, GShard, Mixtral)",
         ("score_function", "softmax_order", "noise_std"), score_function=True),
    Rule("noisy_top_k", "topk:NoisyTopKRouter", "top-k over logits plus trained Gaussian noise (Shazeer et al. 2017)",
         ("noise_std", "score_function", "softmax_order"), score_function=True),
    Rule("gshard_top2", "topk:GShardTop2Router",
         "top-1 plus a second expert kept with probability proportional to its weight"),
    Rule("expert_choice", "expert_choice:ExpertChoiceRouter", "each expert picks its top-c tokens (Zhou et al. 2022)",
         ("score_function",), score_function=True),
    Rule("base", "base_layers:BaseRouter", "balanced linear assignment, solved exactly (Lewis et al. 2021)",
         ("candidates", "compare_exact")),
    Rule("sinkhorn", "sinkhorn:SinkhornRouter", "approximately balanced assignment by Sinkhorn iterations (S-BASE)",
         ("iterations", "tolerance")),
    Rule("hash", "hashing:HashRouter", "fixed hash of the token id (Roller et al. 2021)", ("salt",),
         score_free=True),
    Rule("balanced_hash", "hashing:BalancedHashRouter", "hash that spreads frequent token ids evenly",
         ("token_counts", "salt"), score_free=True),
    Rule("bias_balanced", "bias_balanced:BiasBalancedRouter",
         "DeepSeek-V3 auxiliary-loss-free balancing with a per-expert bias",
         ("num_expert_groups", "topk_groups", "bias_update_rate", "bias", "score_function", "group_score",
          "normalize_weights"), score_function=True, groups=True, bias=True),
    Rule("group_limited", "group_limited:GroupLimitedRouter",
         "DeepSeek-V2/V3 device/node-limited routing: top groups first, then top-k",
         ("num_expert_groups", "topk_groups", "group_score", "score_function"), score_function=True, groups=True),
    Rule("two_level", "two_level:TwoLevelRouter",
         "NLLB-style gate between the dense path / expert groups, then experts",
         ("mode", "num_expert_groups", "topk_groups", "dense_threshold")),
    Rule("balanced", "forced:ForcedBalanceRouter",
         "forced balance: top-k of random logits (Megatron's --moe-router-force-load-balancing)", score_free=True),
)  # fmt: skip

RULES_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULE_TABLE}


def rule_options(name: str) -> list[str]:
    """Keyword options rule `name` accepts (besides num_experts, top_k, capacity_factor)."""
    return list(RULES_BY_NAME[name].options)
