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
]

ROUTING_STRATEGIES: tuple[str, ...] = RoutingStrategy.__args__  # type: ignore[attr-defined]
