"""Routing metrics on small hand-worked cases, and `moesim route`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moesim.cli import app
from moesim.routing import Assignment, make_router
from moesim.routing.metrics import (
    affinity_captured,
    drop_rate,
    load_cv,
    load_imbalance,
    nodes_per_token,
    rank_traffic_tokens,
)

REPO = Path(__file__).resolve().parent.parent


def hand_assignment() -> Assignment:
    # 4 experts on 4 ranks (one each), 2 ranks per node; 3 tokens, k = 2
    ids = torch.tensor([[0, 1], [2, -1], [3, 0]])
    dropped = torch.tensor([[False, False], [False, True], [False, False]])
    return Assignment(expert_ids=ids, weights=(ids >= 0).float() / 2, num_experts=4, dropped=dropped)


def test_load_metrics() -> None:
    assignment = hand_assignment()
    assert assignment.expert_load.tolist() == [2, 1, 1, 1]
    assert drop_rate(assignment) == pytest.approx(1 / 6)
    assert load_imbalance(assignment) == pytest.approx(2 / 1.25)
    assert load_cv(assignment) == pytest.approx(float(torch.tensor([2, 1, 1, 1.0]).std(unbiased=False) / 1.25))


def test_traffic_and_nodes() -> None:
    assignment = hand_assignment()
    expert_rank = torch.arange(4)
    source = torch.tensor([0, 1, 3])
    traffic = rank_traffic_tokens(assignment, expert_rank, source, 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0] = expected[0, 1] = 1  # token 0 from rank 0 to experts 0 and 1
    expected[1, 2] = 1  # token 1 from rank 1 to expert 2
    expected[3, 3] = expected[3, 0] = 1  # token 2 from rank 3 to experts 3 and 0
    assert torch.equal(traffic, expected)
    assert nodes_per_token(assignment, expert_rank, gpus_per_node=2).tolist() == [1, 1, 2]
    # two experts on one rank: one copy of the token
    same_rank = rank_traffic_tokens(assignment, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1]), 2)
    assert int(same_rank.sum()) == 4
    # destinations given slot by slot (replicated experts): token 0's two slots on one rank, sent once
    per_slot = torch.tensor([[1, 1], [0, 0], [0, 1]])
    assert int(rank_traffic_tokens(assignment, per_slot, source, 4).sum()) == 4


def test_affinity_captured() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    best = make_router("top_k", num_experts=3, top_k=1).route(logits)
    assert affinity_captured(best, logits, 1) == pytest.approx(1.0)
    worst = Assignment(torch.tensor([[2], [0]]), torch.ones(2, 1), 3, torch.zeros(2, 1, dtype=torch.bool))
    assert affinity_captured(worst, logits, 1) == pytest.approx(0.2 / 1.4)


def test_route_command() -> None:
    runner = CliRunner()
    scenario = REPO / "scenarios" / "mixtral-8x7b-serving.yaml"
    result = runner.invoke(
        app,
        [
            "route",
            str(scenario),
            "-s",
            "top_k",
            "-s",
            "expert_choice",
            "-s",
            "base",
            "-s",
            "hash",
            "--tokens",
            "2048",
            "--set",
            "routing.capacity_factor=1.0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {row["strategy"]: row for row in json.loads(result.output)}
    assert set(rows) == {"top_k", "expert_choice", "base", "hash"}
    assert rows["expert_choice"]["load_imbalance"] == pytest.approx(1.0)
    assert rows["base"]["drop_rate"] == 0.0 and rows["base"]["load_imbalance"] == pytest.approx(1.0)
    assert rows["top_k"]["affinity_captured"] > rows["hash"]["affinity_captured"]
    table = runner.invoke(app, ["route", str(scenario), "--tokens", "512"])
    words = " ".join(table.output.split())  # headers wrap in a narrow table
    assert table.exit_code == 0 and all(word in words for word in ("drop", "mean", "affinity", "top_k"))
    bad = runner.invoke(app, ["route", str(scenario), "-s", "bass"])
    assert bad.exit_code == 2 and "did you mean 'base'" in bad.output


def test_route_deepseek_group_limit_bounds_nodes() -> None:
    runner = CliRunner()
    scenario = REPO / "scenarios" / "deepseek-v3-pretraining.yaml"
    args = ["route", str(scenario), "--tokens", "4096", "--json"]
    limited = runner.invoke(app, args)  # the model's own rule: bias_balanced, node-limited to 4 of 8 nodes
    assert limited.exit_code == 0, limited.output
    free = runner.invoke(app, [*args, "--set", "routing.num_expert_groups=1"])
    assert free.exit_code == 0, free.output
    (limited_row,), (free_row,) = json.loads(limited.output), json.loads(free.output)
    assert limited_row["strategy"] == "bias_balanced"
    assert limited_row["mean_nodes_per_token"] <= 4.0
    assert free_row["mean_nodes_per_token"] > limited_row["mean_nodes_per_token"]
    # a rule without groups or bias cannot route DeepSeek-V3 as published: an error that names both
    refused = runner.invoke(app, [*args, "-s", "top_k"])
    assert refused.exit_code == 2
    assert "expert groups" in refused.output and "correction bias" in refused.output


def test_route_warms_up_the_deepseek_bias() -> None:
    """Under strong skew a fresh bias routes like top-k; warmed up, it evens the load out."""
    runner = CliRunner()
    scenario = REPO / "scenarios" / "deepseek-v3-pretraining.yaml"
    args = [
        "route",
        str(scenario),
        "-s",
        "bias_balanced",
        "--tokens",
        "8192",
        "--json",
        "--set",
        "workload.expert_popularity_skew=0.8",
    ]
    (warm,) = json.loads(runner.invoke(app, args).output)
    (cold,) = json.loads(runner.invoke(app, [*args, "--set", "simulation.bias_warmup_steps=0"]).output)
    assert cold["load_imbalance"] > 10 and warm["load_imbalance"] < 2
