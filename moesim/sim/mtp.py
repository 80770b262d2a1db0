"""The last stage's heads in training: the output head, and the multi-token-prediction (MTP) modules beside it.

DeepSeek-V3 trains with one MTP module (technical report, section 2.2; `num_nextn_predict_layers: 1` in its
config.json): it predicts the token after next from the main model's last hidden state. Per token it normalises
that hidden state and the next token's embedding (two RMSNorms), concatenates them and projects 2h -> h (its
`eh_proj`), runs one transformer block of the model's own kind (DeepSeek-V3: MLA and an MoE FFN), and scores the
result with the output head it shares with the main model, its cross-entropy a second loss. Megatron-Core runs it
the same way (`--mtp-num-layers`, `megatron/core/transformer/multi_token_prediction.py`) on the last pipeline
stage, with the output head; DeepSeek keeps it there too, the embedding and the head on the same rank (report
3.2.3). moesim plans the MTP block as one more layer at the end of the model (`StagePlan.layers`, so the even
split of layers over stages counts it) and adds what it has beyond a layer: the entry (this module's `entry`
phase) and its pass through the output head. `workload.train_mtp` (default true) trains the modules the model has;
serving uses them only as drafters (`serving.speculative_tokens`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moesim.sim.phase import BACKWARD_MEMORY_FACTOR, Phase, output_head_seconds

if TYPE_CHECKING:
    from moesim.sim.phases import PhaseBuilder

MTP_PHASE = "mtp_entry"
"""The MTP module's entry: the next token's embedding, the two norms, the concatenation and the projection."""


def output_head_phases(builder: "PhaseBuilder") -> tuple[Phase, Phase]:
    """The output head on the last stage, forward and backward: the vocabulary GEMM (its TP share on the group's
    tokens) and the fp32 logits' passes of the softmax cross-entropy."""
    cost, model = builder.cost, builder.model
    vocab = model.vocab_size // builder.tp
    loss = cost.memory_seconds(8 * builder.gemm_tokens * vocab)
    head = output_head_seconds(cost, builder.gemm_tokens, model.hidden_size, vocab)
    head_backward = (
        float(cost.gemm_backward_seconds(builder.gemm_tokens, model.hidden_size, vocab)) + BACKWARD_MEMORY_FACTOR * loss
    )
    return Phase("lm_head", -1, builder.same(head)), Phase("lm_head", -1, builder.same(head_backward))


def entry_phases(builder: "PhaseBuilder", index: int) -> tuple[Phase, Phase]:
    """An MTP module's entry, forward and backward: the next token's embedding read, two RMSNorms (each a read and
    a write of the hidden state), the concatenation written, and the 2h -> h projection (column-parallel under
    TP, on the group's tokens)."""
    cost, model = builder.cost, builder.model
    hidden, element = model.hidden_size, builder.element
    passes = builder.tokens * hidden * element * (1 + 2 * 2 + 2)  # embedding, two norms, the concatenation
    memory = cost.memory_seconds(passes)
    projection = float(cost.gemm_seconds(builder.gemm_tokens, 2 * hidden, hidden // builder.tp, fp8=builder.fp8))
    projection_backward = float(
        cost.gemm_backward_seconds(builder.gemm_tokens, 2 * hidden, hidden // builder.tp, fp8=builder.fp8)
    )
    forward = Phase(MTP_PHASE, index, builder.same(memory + projection))
    backward = Phase(MTP_PHASE, index, builder.same(BACKWARD_MEMORY_FACTOR * memory + projection_backward))
    return forward, backward
