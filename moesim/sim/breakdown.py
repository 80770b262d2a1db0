"""A training step cut into the parts a published breakdown names: forward, backward (input gradients and weight
gradients), recomputation, the communication the all-to-all overlap hides, the pipeline bubble, the exposed
gradient sync, the optimizer and the exposed parameter all-gather (`moesim.sim.step_end`), for the busiest pipeline
stage. The parts add up to the step time.

The weight gradients come from the same kernel models as the backward phases (`CostModel.*weight_grad*`): the
attention projections, dense and shared FFNs, every rank's experts (mean over ranks), the router and the output
head of the stage; the input-gradient part is the rest of the backward, its collectives and waits included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.models import accounting
from moesim.models.spec import GATED_ACTIVATIONS

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.routing_load import LayerRouting

BREAKDOWN_PARTS = (
    ("forward_s", "forward"),
    ("backward_input_s", "backward: input gradients (with its collectives)"),
    ("backward_weight_s", "backward: weight gradients"),
    ("recompute_s", "recomputation"),
    ("overlap_hidden_s", "hidden by the all-to-all overlap"),
    ("bubble_s", "pipeline bubble"),
    ("grad_allreduce_exposed_s", "gradient sync at the step end (exposed)"),
    ("optimizer_s", "optimizer"),
    ("param_gather_exposed_s", "parameter all-gather after it (exposed)"),
)
"""Keys of `StepResult.breakdown` and their labels, in the order a step runs them."""


def weight_gradient_seconds(
    builder: "PhaseBuilder", stage: int, routing: list["LayerRouting"], first_moe: int
) -> float:
    """Seconds of weight-gradient GEMMs in one micro-batch's backward on `stage` (a rank's mean)."""
    model, cost = builder.model, builder.cost
    tokens, hidden, element, fp8 = builder.tokens, model.hidden_size, builder.element, builder.fp8
    gathered = builder.gemm_tokens  # what the TP-split attention, dense FFN and head GEMMs run
    total = 0.0
    moe_layer = first_moe
    for layer in builder.plan.stages[stage]:
        if layer.mtp:  # an MTP module's 2h -> h projection (`moesim.sim.mtp`)
            total += float(cost.gemm_weight_grad_seconds(gathered, 2 * hidden, hidden // builder.tp, fp8=fp8))
        projections = accounting.attention_params(model) * (2 if layer.cross_attention else 1) / builder.tp
        cols = max(1, int(projections // hidden))
        total += float(cost.gemm_weight_grad_seconds(gathered, hidden, cols, fp8=fp8))
        if not layer.is_moe:
            inner = model.intermediate_size // builder.tp
            gated = model.dense_ffn_activation in GATED_ACTIVATIONS
            total += float(cost.ffn_weight_grad_seconds(gathered, hidden, inner, gated, element, fp8))
            continue
        rows = routing[moe_layer % len(routing)].rank_rows
        moe_layer += 1
        gated = model.expert_ffn_activation in GATED_ACTIVATIONS
        total += float(
            np.mean(
                [
                    cost.experts_ffn_weight_grad_seconds(
                        rank_rows * builder.expert_row_gather, hidden, builder.expert_inner, gated, element, fp8
                    )
                    for rank_rows in rows
                ]
            )
        )
        if model.num_shared_experts:
            inner = model.shared_expert_size * model.num_shared_experts
            total += float(cost.ffn_weight_grad_seconds(tokens, hidden, inner, gated, element, fp8))
        total += float(cost.gemm_weight_grad_seconds(tokens, hidden, model.num_experts))
    if stage == builder.plan.num_stages - 1:  # the output head, once more for each MTP module
        heads = 1 + builder.plan.mtp_modules
        total += heads * float(cost.gemm_weight_grad_seconds(gathered, hidden, model.vocab_size // builder.tp))
    return total


def stage_work(forward: float, backward: float, items: list[tuple], chunks: int = 1) -> tuple[float, float]:
    """(seconds the stage computes over the step, seconds the all-to-all overlap hides): its scheduled F and B
    items (`engine.stage_items`) against the same items run one after another."""
    work = sum(item[3] for item in items)
    plain = sum((forward if item[0] == "F" else backward) / chunks for item in items)
    return work, plain - work
