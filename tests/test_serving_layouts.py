"""Work is conserved across serving layouts: an engine's attention ranks (TP groups holding their own requests,
the tokens replicated on a group's GPUs) meet in expert groups of EP x ETP GPUs, and the FLOPs charged all the
GPUs of an expert group in a prompt's forward pass equal the model's forward FLOPs per token times the group's
distinct tokens: an attention rank's tokens times the attention ranks in the group, whatever the split. Before
this was pinned, serving routed every TP rank's copy of the same tokens as tokens of its own (TP 8 with EP 8: 8x
the experts' rows, a decode step of Qwen3-235B on 8 H100 at 4 requests 24 ms where the engine measured 11).

The counting cost model is the training conservation test's (`FlopCounter`: GEMMs 2mkn, attention its FLOPs,
memory passes and launches free); a causal prompt's attention runs its diagonal tiles whole (declared there), and
the router runs on every GPU of a TP group (declared below).
"""

from __future__ import annotations

import pytest

from moesim.cluster.topology import Topology
from moesim.cost.model import causal_tile_share
from moesim.models import accounting
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.plan import StagePlan, attention_ranks_per_expert_group, expert_group_tokens
from moesim.sim.stages import simulate_stages
from tests.test_flop_conservation import COUNTER, MODEL

COLLECTIVES = ("dispatch", "combine", "tp_allreduce", "wait")
"""Phases that are communication or waiting, not compute (the shared experts under the dispatch count as theirs
in `busy`)."""
TOKENS = 512
"""An attention rank's prompt tokens in the pass."""


def serving_document(tp: int, ep: int, etp: int) -> dict:
    return {
        "model": MODEL,
        "cluster": {"num_nodes": 1, "gpus_per_node": 8},
        "parallelism": {"tp_size": tp, "ep_size": ep, "expert_tp_size": etp},
        "workload": {"mode": "inference", "micro_batch_size": 1, "seq_len": TOKENS},
        "routing": {"strategy": "top_k", "capacity_factor": None},
        "simulation": {"network_mode": "fast", "moe_kernels": "fused", "max_routed_tokens": 1 << 20},
    }


def charged_group_flops(scenario: Scenario) -> float:
    """Every compute phase of the prompt's forward pass as the simulator runs it (`simulate_stages`, which routes
    the expert group's tokens itself), over all the GPUs of one expert group: `busy` holds each phase's mean over
    the EP ranks, each rank one GPU of an ETP group whose GPUs all do the same."""
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    passes, _, _ = simulate_stages(scenario, plan, COUNTER, topology, TOKENS, TOKENS, False, False, tp_gathers=False)
    par = scenario.parallelism
    compute = sum(seconds for name, seconds in passes.busy[0].items() if name not in COLLECTIVES)
    return compute * par.ep_size * par.expert_tp_size


def model_forward_flops(scenario: Scenario) -> float:
    model = scenario.model
    tokens = TOKENS * attention_ranks_per_expert_group(scenario)
    norms = (2 * model.num_layers + 1) * model.hidden_size
    matmul = 2.0 * (accounting.active_params(model, count_input_embedding=False) - norms)
    keys = TOKENS * causal_tile_share(TOKENS)
    scores = accounting.score_flops_per_key(model) * keys * model.num_layers
    # declared: every GPU of a TP group computes the router on the group's tokens (vLLM's and SGLang's gate is a
    # replicated linear layer; TensorRT-LLM's likewise)
    router = 2.0 * model.hidden_size * model.num_experts * model.num_moe_layers * (scenario.parallelism.tp_size - 1)
    return tokens * (matmul + scores + router)


LAYOUTS = [(1, 8, 1), (2, 8, 1), (4, 8, 1), (8, 8, 1), (8, 1, 8), (8, 4, 2), (4, 2, 2), (2, 2, 4), (1, 4, 2)]
"""(attention TP, EP, ETP) on one 8-GPU node, as the given file's engines deploy them."""


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp%d-ep%d-etp%d" % t)
def test_serving_flops_charged_equal_the_models_distinct_tokens(layout: tuple[int, int, int]) -> None:
    scenario = scenario_from_dict(serving_document(*layout))
    assert charged_group_flops(scenario) == pytest.approx(model_forward_flops(scenario), rel=1e-9)


def test_tp_attention_over_ep_experts_routes_each_token_once() -> None:
    """TP 8 attention over EP 8 experts: the 8 GPUs hold the same tokens, so the group routes them once."""
    scenario = scenario_from_dict(serving_document(8, 8, 1))
    assert attention_ranks_per_expert_group(scenario) == 1
    assert expert_group_tokens(scenario, TOKENS, tp_gathers=False) == TOKENS
    assert expert_group_tokens(scenario, TOKENS, tp_gathers=True) == 8 * TOKENS  # training: SP shares


def test_tp_attention_over_the_experts_moves_no_tokens_and_all_reduces_twice() -> None:
    """TP 8 over EP 8: every GPU holds the tokens, so no dispatch or combine; each layer all-reduces after its
    attention and after its MoE block. With data-parallel attention (TP 1, EP 8) the tokens are dispatched."""
    plan_of = {}
    for layout in ((8, 8, 1), (1, 8, 1)):
        scenario = scenario_from_dict(serving_document(*layout))
        plan = StagePlan(scenario)
        passes, _, _ = simulate_stages(
            scenario, plan, COUNTER, Topology.from_cluster(scenario.cluster), TOKENS, TOKENS, False, False, False
        )
        plan_of[layout] = passes.busy[0]
    replicated, dispatched = plan_of[(8, 8, 1)], plan_of[(1, 8, 1)]
    assert "dispatch" not in replicated and "combine" not in replicated
    assert "dispatch" in dispatched and "tp_allreduce" not in dispatched
