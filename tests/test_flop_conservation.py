"""Work is conserved across parallel layouts: over random TP, CP, PP, VPP, EP, ETP and DP, dropless and without
redundant experts, the FLOPs the simulator charges all the ranks of a micro-batch's pass equal the model's FLOPs
per token times the pass's tokens, plus only what a layout or a kernel repeats by design, declared below.

The simulator is run on a cost model whose seconds are FLOPs (`FlopCounter`: a GEMM of m x k x n costs 2mkn,
attention its score FLOPs, memory passes and launches nothing), so summing every compute phase of every rank sums
the FLOPs charged. With tensor parallelism each rank holds 1/TP of its group's tokens (sequence parallelism), and
its attention, dense-FFN and output-head GEMMs run the group's whole sequence on 1/TP of the widths: a rank that ran
only its own tokens on 1/TP of the widths would be charged 1/TP^2 (the defect this test was written for).

Declared, by design:
- a causal prompt's attention runs its diagonal tiles whole: keys = context x `causal_tile_share(context)` a
  query, where the model's count is context / 2;
- the attention backward costs `BACKWARD_ATTENTION_FACTOR` x its forward (FlashAttention's backward recomputes
  the scores), every GEMM's backward 2 x its forward (input and weight gradients);
- full recomputation replays every transformer layer's forward once more (not the output head's).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.cost.model import CostModel, causal_tile_share
from moesim.errors import ScenarioError
from moesim.models import accounting
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.phase import BACKWARD_ATTENTION_FACTOR
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers

MODEL = dict(
    name="conservation",
    num_layers=8,
    hidden_size=256,
    vocab_size=1024,
    max_seq_len=4096,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_experts=16,
    top_k=2,
    num_shared_experts=1,
    first_k_dense_layers=1,
)


@dataclass(frozen=True)
class FlopCounter(CostModel):
    """A cost model whose seconds are FLOPs: GEMMs 2mkn, attention its FLOPs, memory and launches free."""

    def gemm_seconds(self, rows, inner, cols, element_bytes=2, fp8=False):  # type: ignore[override]
        return 2.0 * np.asarray(rows, dtype=float) * inner * cols

    def attention_seconds(self, flops, query_blocks=0.0):  # type: ignore[override]
        return flops

    def attention_backward_slowdown(self, tokens):  # type: ignore[override]
        return 1.0  # a rate, not FLOPs


COUNTER = FlopCounter(
    name="flops",
    peak_flops=1.0,
    memory_bytes_per_s=float("inf"),
    kernel_launch_s=0.0,
    attention_overhead_s=0.0,
    backward_gemm_factor=2.0,
)


def charged_flops(scenario: Scenario) -> float:
    """Every compute phase of every stage, forward and backward, summed over the EP group's ranks: the FLOPs one
    micro-batch's pass charges the GPUs that hold its tokens."""
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    tokens, par = plan.tokens_per_rank, scenario.parallelism
    moe_layers = list(range(scenario.model.num_moe_layers))
    routing, _ = route_layers(scenario, moe_layers, tokens * par.ep_size, topology.gpus_per_node)
    builder = PhaseBuilder(scenario, plan, COUNTER, topology, tokens, scenario.workload.seq_len)
    total, first_moe = 0.0, 0
    for stage in range(plan.num_stages):
        program = builder.stage_program(stage, routing, first_moe)
        first_moe += plan.stage_moe_layer_count(stage)
        for phase in program.forward + program.backward:
            if not phase.collective:
                total += float(np.sum(phase.seconds))
            elif phase.overlapped is not None:  # compute run under a collective (the shared experts)
                total += float(np.sum(phase.overlapped.seconds))
    return total


def model_flops(scenario: Scenario) -> float:
    """The model's FLOPs for the pass's tokens, from the architecture alone, with the declared repeats."""
    model, workload, par = scenario.model, scenario.workload, scenario.parallelism
    tokens = par.ep_size * StagePlan(scenario).tokens_per_rank  # the EP group's ranks' tokens
    norms = (2 * model.num_layers + 1) * model.hidden_size  # weights, not matmuls
    matmul = 2.0 * (accounting.active_params(model, count_input_embedding=False) - norms)
    keys = workload.seq_len * causal_tile_share(workload.seq_len)  # the diagonal tiles run whole
    scores = accounting.score_flops_per_key(model) * keys * model.num_layers
    per_token = 3.0 * matmul + (1.0 + BACKWARD_ATTENTION_FACTOR) * scores
    if workload.activation_recompute == "full":  # every layer's forward again; the output head is not a layer
        per_token += matmul - 2.0 * model.vocab_size * model.hidden_size + scores
    if model.num_mtp_modules and workload.train_mtp:  # each MTP module: its projection, block and head pass
        mtp = accounting.mtp_forward_flops_per_token(model, workload.seq_len)
        mtp_scores = accounting.score_flops_per_key(model) * keys
        mtp += mtp_scores - accounting.score_flops_per_key(model) * workload.seq_len / 2  # diagonal tiles whole
        per_token += model.num_mtp_modules * (3.0 * mtp + (BACKWARD_ATTENTION_FACTOR - 2.0) * mtp_scores)
        if workload.activation_recompute == "full":  # the block and its entry again, not the head
            per_token += model.num_mtp_modules * (mtp - 2.0 * model.vocab_size * model.hidden_size)
    return tokens * per_token


def random_layouts(count: int, seed: int) -> list[list[str]]:
    """`count` valid layouts (overrides), drawn with a fixed seed."""
    rng = random.Random(seed)
    layouts: list[list[str]] = []
    while len(layouts) < count:
        tp, cp, pp = rng.choice([1, 2, 4]), rng.choice([1, 2]), rng.choice([1, 2, 4])
        vpp = rng.choice([1, 2]) if pp > 1 else 1
        ep, etp = rng.choice([1, 2, 4, 8, 16]), rng.choice([1, 1, 2])
        dp = rng.choice([1, 2, 4, 8])
        world = tp * cp * pp * dp
        if world < 8 and world not in (1, 2, 4):
            continue
        overrides = [
            f"cluster.num_nodes={max(1, world // 8)}",
            f"cluster.gpus_per_node={min(8, world)}",
            f"parallelism.tp_size={tp}",
            f"parallelism.cp_size={cp}",
            f"parallelism.pp_size={pp}",
            f"parallelism.virtual_pipeline_size={vpp}",
            f"parallelism.ep_size={ep}",
            f"parallelism.expert_tp_size={etp}",
            f"workload.activation_recompute={rng.choice(['none', 'full'])}",
        ]
        try:
            scenario_from_dict(document(), overrides)
        except ScenarioError:
            continue
        layouts.append(overrides)
    return layouts


def document(mtp: int = 0) -> dict:
    return {
        "model": {**MODEL, "num_mtp_modules": mtp},
        "workload": {"micro_batch_size": 2, "seq_len": 1024, "global_batch_size": 64},
        "routing": {"strategy": "top_k", "capacity_factor": None},
        "simulation": {"network_mode": "fast", "max_routed_tokens": 1 << 20},
    }


@pytest.mark.parametrize("overrides", random_layouts(24, seed=25), ids=lambda o: ",".join(v.split("=")[1] for v in o))
def test_flops_charged_equal_the_models_across_layouts(overrides: list[str]) -> None:
    scenario = scenario_from_dict(document(), overrides)
    assert charged_flops(scenario) == pytest.approx(model_flops(scenario), rel=1e-9)


@pytest.mark.parametrize("overrides", random_layouts(6, seed=26), ids=lambda o: ",".join(v.split("=")[1] for v in o))
def test_a_multi_token_prediction_module_adds_its_projection_block_and_head_pass(overrides: list[str]) -> None:
    """Training with one MTP module (`moesim.sim.mtp`): the FLOPs charged are the main model's plus the module's
    2h -> h projection, one MoE block and one more pass through the output head, on every layout."""
    scenario = scenario_from_dict(document(mtp=1), overrides)
    assert StagePlan(scenario).mtp_modules == 1
    assert charged_flops(scenario) == pytest.approx(model_flops(scenario), rel=1e-9)
    without = scenario_from_dict(document(mtp=1), [*overrides, "workload.train_mtp=false"])
    assert charged_flops(without) == pytest.approx(charged_flops(scenario_from_dict(document(), overrides)))


def test_tensor_parallelism_charges_each_rank_a_tp_share_not_its_square() -> None:
    """A TP group's attention projections cost the same FLOPs at TP 1, 2 and 4: each rank runs the group's whole
    sequence on 1/TP of the heads (before the fix, its 1/TP of the tokens on 1/TP of the heads: 1/TP^2)."""
    flops = []
    for tp in (1, 2, 4):
        scenario = scenario_from_dict(
            document(), [f"parallelism.tp_size={tp}", "cluster.gpus_per_node=4", "parallelism.ep_size=4"]
        )
        plan = StagePlan(scenario)
        builder = PhaseBuilder(
            scenario, plan, COUNTER, Topology.from_cluster(scenario.cluster), plan.tokens_per_rank, 1024
        )
        flops.append(builder.attention_parts(plan.layers[0])["projections"] * tp)  # a TP group's ranks together
    assert flops[0] == pytest.approx(flops[1]) == pytest.approx(flops[2])


def test_a_dense_layer_pays_two_tp_collectives_a_moe_layer_one() -> None:
    """Megatron-Core's TP with SP: a dense layer all-gathers and reduce-scatters around its attention and around
    its FFN (two all-reduces' worth each way); a MoE layer around its attention only (its tokens, SP-split, go to
    the experts by the all-to-all)."""
    scenario = scenario_from_dict(document(), ["parallelism.tp_size=2", "cluster.gpus_per_node=2"])
    plan = StagePlan(scenario)
    builder = PhaseBuilder(scenario, plan, COUNTER, Topology.from_cluster(scenario.cluster), plan.tokens_per_rank, 1024)
    routing, _ = route_layers(scenario, [0], plan.tokens_per_rank, 2)
    dense, moe = plan.layers[0], plan.layers[1]
    assert not dense.is_moe and moe.is_moe
    for layer, index, count in ((dense, None, 2), (moe, 0, 1)):
        forward, backward = builder.layer_phases(layer, routing, index)
        assert sum(phase.name == "tp_allreduce" for phase in forward) == count
        assert sum(phase.name == "tp_allreduce" for phase in backward) == count
