"""What a layer's backward replays before it runs: nothing, the whole forward (full recomputation), or the
modules of Megatron-Core's selective recomputation.

Selective recomputation (`workload.activation_recompute: selective`, `workload.recompute_modules`) trades the
activations `moesim.models.accounting.activation_bytes_per_token` drops for the forward work that rebuilds them:

* `core_attn`: the fused attention kernel's forward (its output and log-sum-exp are rebuilt);
* `mla_up_proj`: MLA's latent-to-head up-projection GEMMs, the latent norms before them and the RoPE after
  (DeepSeek-V3 recomputes them, report 3.3.3);
* `layernorm`: the norms' memory passes (DeepSeek-V3 recomputes RMSNorm);
* `moe_act`: the experts' activation function, an element-wise pass over every routed row's intermediate;
* `mlp`: a dense FFN's forward;
* `moe`: an MoE layer's whole forward, its all-to-alls included.

The compute pieces of one layer run as one `recompute` phase; `mlp` and `moe` replay the layer's own phases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.sim.phase import Phase

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import Layer

MOE_FORWARD = ("router", "permute", "dispatch", "shared_experts", "experts", "combine", "unpermute")
"""Forward phases of an MoE block, replayed by the `moe` module."""


def replayed_phases(builder: "PhaseBuilder", layer: "Layer", layer_forward: list[Phase]) -> list[Phase]:
    """The phases `layer`'s backward runs first to rebuild what its forward did not keep."""
    workload = builder.scenario.workload
    if workload.activation_recompute == "full":
        return list(layer_forward)
    if workload.activation_recompute != "selective":
        return []
    modules = set(workload.recompute_modules)
    model = builder.model
    parts = builder.attention_parts(layer)
    seconds = 0.0
    if "core_attn" in modules:
        seconds += parts["scores"]
    if "mla_up_proj" in modules and model.attention_type == "mla":  # its up-projections, with the latent norms
        # that feed them and the RoPE applied after (Megatron-Core: "the MLA up projection and RoPE applying parts")
        seconds += parts["up_projections"] + parts["head_norms"] + parts["rope"]
    elif "mla_up_proj" in modules:
        seconds += parts["up_projections"]
    if "layernorm" in modules:
        seconds += parts["norms"]
    if "moe_act" in modules and layer.is_moe:
        rows = builder.tokens * (builder.scenario.routing.top_k or model.top_k)
        inner = rows * builder.expert_inner + builder.tokens * model.shared_expert_size * model.num_shared_experts
        seconds += builder.cost.memory_seconds(3 * inner * builder.element)  # read the projections, write the output
    replay = [Phase("recompute", layer.index, np.full(builder.ranks, seconds))] if seconds > 0 else []
    for phase in layer_forward:
        if ("mlp" in modules and phase.name == "dense_ffn") or ("moe" in modules and phase.name in MOE_FORWARD):
            replay.append(phase)
    return replay
