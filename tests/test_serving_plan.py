"""The serving planner: layouts that serve a request rate within latency targets, cheapest first."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from moesim.cli import app
from moesim.planning.serving import plan_serving

OLMOE = {
    "name": "olmoe-serve",
    "description": "OLMoE serving",
    "model": {"preset": "olmoe-1b-7b", "num_layers": 4},
    "cluster": {"num_nodes": 1, "gpus_per_node": 8},
    "parallelism": {"ep_size": 8},
    "workload": {"mode": "inference"},
    "serving": {
        "input_tokens": 1024,
        "output_tokens": 64,
        "num_requests": 160,
        "arrival": "poisson",
        "request_rate": 40,
    },
}


def test_the_cheapest_layout_within_the_targets_comes_first() -> None:
    plan = plan_serving(OLMOE, 40.0, ttft_p90_s=1.0, tpot_p90_s=0.05, gpus=["H100-SXM", "A100-80GB"], max_gpus=8)
    layouts = 2 * (4 * 4 + 3)  # two GPUs x (DEP: attention TP 1, 2, 4, 8 x EP 1, 2, 4, 8; TP replicas of 2, 4, 8)
    # the cheapest three again with other batch limits, where they change anything
    assert layouts <= plan.evaluated <= layouts + 3 * 5
    assert plan.options and all(o.meets for o in plan.options)
    costs = [o.result.dollars_per_million_output_tokens for o in plan.options]
    assert costs == sorted(costs) and plan.options[0].gpu == "A100-80GB"  # the same 8 GPUs, cheaper by the hour
    assert all(o.result.ttft_s[90] <= 1.0 and o.result.tpot_s[90] <= 0.05 for o in plan.options)
    front = [o.result.output_tokens_per_s_per_gpu for o in plan.pareto]
    assert front == sorted(front)  # each further point gives up latency for throughput
    # what each GPU's iteration times rest on
    assert set(plan.compute_sources) == {"H100-SXM", "A100-80GB"}
    assert plan.compute_sources["H100-SXM"].startswith("measured kernel tables")


def test_plan_serve_prints_a_verdict_and_exits_1_when_nothing_meets_the_targets(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(OLMOE))
    runner = CliRunner()
    good = runner.invoke(app, ["plan", str(path), "--serve", "--ttft", "1", "--tpot", "0.05", "--max-gpus", "8"])
    assert good.exit_code == 0 and "\nplan: 8 x H100-SXM" in good.output  # after the progress bar (stderr)
    impossible = runner.invoke(app, ["plan", str(path), "--serve", "--tpot", "0.00001", "--max-gpus", "8"])
    assert impossible.exit_code == 1 and "no plan" in impossible.output
    neither = runner.invoke(app, ["plan", str(path)])
    assert neither.exit_code == 2 and "one of the two" in neither.output
    # --json gives numbers as numbers (the table's "90%" and "1,234" are for reading)
    data = json.loads(
        runner.invoke(
            app, ["plan", str(path), "--serve", "--ttft", "1", "--tpot", "0.05", "--max-gpus", "8", "--json"]
        ).stdout
    )
    first = data["options"][0]
    assert isinstance(first["gpus"], int) and isinstance(first["load"], float) and 0 < first["load"] < 1
    assert isinstance(first["output_tokens_per_s_per_gpu"], float) and first["gpu"] == "H100-SXM"


def test_the_search_splits_nodes_into_prefill_and_decode_pools_and_tries_tensor_parallel_replicas() -> None:
    from moesim.planning.serving import serving_layouts
    from moesim.scenario import scenario_from_dict

    layouts = list(serving_layouts(scenario_from_dict(OLMOE), ["H100-SXM"], 16))
    splits = {layout.split for layout in layouts}
    assert splits == {"-", "1+1"}  # two nodes: one pool, or a node of each
    assert {layout.form for layout in layouts} == {"DEP", "TP"}
    assert all(layout.ep_size == 1 and layout.tp_size > 1 for layout in layouts if layout.form == "TP")
    # a decode pool's EP divides the decode pool's GPUs
    assert all(((layout.num_nodes - layout.prefill_nodes) * 8) % layout.ep_size == 0 for layout in layouts)
    # a prefill pool of two nodes tries its EP within a node (8) and across the pool (16); of one node, once
    wider = list(serving_layouts(scenario_from_dict(OLMOE), ["H100-SXM"], 32))
    # node counts in steps of 1.5x or 2x: a plan is never more than a third larger than it must be
    assert {o.num_nodes for o in wider} == {1, 2, 3, 4} and {o.split for o in wider if o.num_nodes == 3} == {"-", "1+2"}
    assert {o.prefill_ep for o in wider if o.split == "2+2" and o.form == "DEP" and o.tp_size == 1} == {8, 16}
    assert {o.prefill_ep for o in wider if o.split == "1+3" and o.form == "DEP" and o.tp_size == 1} == {8}
    assert {o.prefill_ep for o in wider if o.split == "2+2" and o.form == "DEP" and o.tp_size == 2} == {4, 8}
    plan = plan_serving(OLMOE, 40.0, ttft_p90_s=1.0, tpot_p90_s=0.05, gpus=["H100-SXM"], max_gpus=16)
    served = {(o.layout.form, o.layout.split) for o in plan.options}
    assert ("DEP", "1+1") in served and ("TP", "-") in served
    disaggregated = next(o for o in plan.options if o.layout.prefill_nodes)
    assert disaggregated.gpus == 16 and "disaggregated" in disaggregated.result.notes[0]


def test_a_model_one_node_cannot_hold_is_served_in_pipeline_stages_across_nodes() -> None:
    """From two nodes up the search tries tensor parallelism within a node with pipeline stages across the nodes
    (vLLM's multi-node form). Mixtral 8x7B's 94 GB of bf16 weights do not fit one node of 8 x 10 GB; in two
    stages over two nodes each node holds half the layers."""
    import pytest

    from moesim.errors import MoesimError
    from moesim.planning.serving import Layout, _overrides, serving_layouts
    from moesim.scenario import scenario_from_dict
    from moesim.serving import simulate_serving

    mixtral = {**OLMOE, "model": {"preset": "mixtral-8x7b", "num_layers": 32}}
    layouts = list(serving_layouts(scenario_from_dict(mixtral), ["H100-SXM"], 32))
    staged = {(o.num_nodes, o.pp_size) for o in layouts if o.pp_size > 1}
    assert staged == {(2, 2), (4, 2), (4, 4)}
    assert all(o.form == "TP" and o.tp_size == 8 and not o.prefill_nodes for o in layouts if o.pp_size > 1)
    assert Layout("H100-SXM", 2, 8, 1, "TP", pp_size=2).form_label == "TP PP2"

    def served(layout: Layout):  # type: ignore[no-untyped-def]
        overrides = _overrides(layout, 4.0, 3.0, 8192, 64) + ["cluster.gpu.hbm_gb=10", "serving.num_requests=40"]
        return simulate_serving(scenario_from_dict(mixtral, overrides))

    with pytest.raises(MoesimError, match="more KV cache than an attention rank holds"):
        served(Layout("H100-SXM", 1, 8, 1, "TP"))
    staged_result = served(Layout("H100-SXM", 2, 8, 1, "TP", pp_size=2))
    assert staged_result.gpus == 16 and staged_result.attention_ranks == 2  # one pipeline, an engine a stage
    assert any(note.startswith("pipeline: an iteration takes max(") for note in staged_result.notes)


def test_layouts_with_the_same_pools_but_other_node_counts_share_one_iteration_model_and_its_figures() -> None:
    """The planner builds iteration times once per pool shape (`iteration_cost_key`): an EP group's ranks and
    links are the same in any cluster that holds it, so a deployment served with shared iteration times gets
    exactly the figures it gets alone, one pool or two."""
    from moesim.planning.serving import Layout, SharedIterationCosts, _overrides
    from moesim.scenario import scenario_from_dict
    from moesim.serving import prefill_pool_scenario, simulate_serving
    from moesim.serving.iteration import iteration_cost_key

    def scenario(layout: Layout):  # type: ignore[no-untyped-def]
        return scenario_from_dict(OLMOE, _overrides(layout, 40.0, 3.0, 8192, 64))

    one_node, two_nodes = scenario(Layout("H100-SXM", 1, 1, 8)), scenario(Layout("H100-SXM", 2, 1, 8))
    assert iteration_cost_key(one_node) == iteration_cost_key(two_nodes)
    assert iteration_cost_key(one_node) != iteration_cost_key(scenario(Layout("H100-SXM", 1, 2, 4)))
    split = scenario(Layout("H100-SXM", 2, 1, 8, prefill_nodes=1, prefill_ep=8))
    assert iteration_cost_key(prefill_pool_scenario(split)) == iteration_cost_key(one_node)  # a one-node pool
    shared = SharedIterationCosts()
    for deployment in (one_node, two_nodes, split):
        alone = simulate_serving(deployment)
        assert shared.serve(deployment).as_dict() == alone.as_dict()
        assert shared.load(deployment) == alone.load  # what the planner skips the engines on
    assert len(shared._costs) == 1  # one pool shape served all three


def test_an_engine_busy_all_the_time_far_below_its_capacity_keeps_up() -> None:
    """Continuous batching runs iteration after iteration whenever a sequence is in flight: at 800 requests/s the
    engines of one node never idle, yet the rate asks about a third of what they serve at their largest steady
    batch and the first tokens come within milliseconds. Keeping up is the load, not the time busy."""
    plan = plan_serving(OLMOE, 800.0, ttft_p90_s=1.0, tpot_p90_s=0.05, gpus=["H100-SXM"], max_gpus=8)
    busy = [o for o in plan.options if o.result.busy_share > 0.99 and (o.result.load or 1) < 0.5]
    assert busy and all(o.result.ttft_s[90] < 0.05 for o in busy)
    assert any(note.startswith("load: ") for note in busy[0].result.notes)


def test_a_plan_can_keep_headroom_for_bursts() -> None:
    """`--max-load 0.5`: only layouts whose engines would serve at least twice the rate qualify; the default keeps
    those up to 95%. A load outside (0, 1] is an error naming the option."""
    import pytest

    from moesim.errors import MoesimError

    default = plan_serving(OLMOE, 800.0, ttft_p90_s=1.0, tpot_p90_s=0.05, gpus=["H100-SXM"], max_gpus=8)
    roomy = plan_serving(OLMOE, 800.0, ttft_p90_s=1.0, tpot_p90_s=0.05, gpus=["H100-SXM"], max_gpus=8, max_load=0.5)
    assert max(o.result.load or 0 for o in default.options) > 0.5
    assert roomy.options and all((o.result.load or 1) <= 0.5 for o in roomy.options)
    assert len(roomy.options) < len(default.options)
    with pytest.raises(MoesimError, match="--max-load"):
        plan_serving(OLMOE, 800.0, ttft_p90_s=1.0, tpot_p90_s=0.05, max_gpus=8, max_load=1.5)
