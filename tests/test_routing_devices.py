"""Every routing rule stays on the device of its scores and never waits for it.

Without a GPU two checks stand in for one:
* meta tensors (shapes without values, a device other than the CPU): a rule that makes
  a tensor on the CPU, reads a value (`.item()`, `int(t)`) or makes a shape that depends
  on the data (boolean masks, `nonzero`, `bincount`) fails on them, exactly the mistakes
  that crash on a GPU or make it wait;
* CPU scores under a meta default device: a tensor made without naming a device lands on
  meta and cannot mix with the scores, so every factory call must follow the scores.
On a machine with CUDA the rules also run on the GPU with synchronising calls turned
into errors, and agree with the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moesim.routing import RULES, make_router

HOST_BY_NATURE = {"base"}
"""Rules that move to the host on purpose (BASE's OR-Tools solver), said in their docstrings."""

RANDOM_RULES = {"noisy_top_k", "gshard_top2"}
"""Rules that draw random numbers: each device has its own stream, so CPU and GPU draws differ."""

SCORE_BLIND = {"hash", "balanced_hash", "balanced"}
"""Rules that route by token id or position alone: other scores, the same routes."""

EXPERTS, TOP_K, TOKENS = 8, 2, 64


def options_for(rule: str) -> dict[str, Any]:
    if rule in ("group_limited", "bias_balanced", "two_level"):
        return {"num_expert_groups": 4, "topk_groups": 2}
    if rule == "balanced_hash":
        return {"token_counts": list(range(50, 0, -1))}  # a table fitted up front: routing is a lookup
    return {}


def routers(capacity_factor: float | None, policy: str = "position") -> list[tuple[str, Any]]:
    return [
        (
            rule,
            make_router(
                rule,
                num_experts=EXPERTS,
                top_k=TOP_K,
                capacity_factor=capacity_factor,
                drop_policy=policy,
                **options_for(rule),
            ),
        )
        for rule in RULES
    ]


def scores_on(device: str, rule: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(TOKENS, EXPERTS, generator=generator)
    token_ids = torch.randint(0, 60, (TOKENS,), generator=generator)
    return logits.to(device), token_ids.to(device)


@pytest.mark.parametrize("capacity_factor, policy", [(None, "position"), (1.0, "position"), (1.25, "probability")])
def test_rules_run_on_a_device_other_than_the_cpu_without_reading_values(
    capacity_factor: float | None, policy: str
) -> None:
    for rule, router in routers(capacity_factor, policy):
        if rule in HOST_BY_NATURE:
            continue
        logits, token_ids = scores_on("meta", rule)
        assignment = router.route(logits, token_ids)
        for name in ("expert_ids", "weights", "dropped"):
            assert getattr(assignment, name).device.type == "meta", f"{rule}: {name} left the scores' device"
        assert assignment.expert_load.device.type == "meta"
        assert assignment.routing_map().device.type == "meta"


@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_no_rule_makes_tensors_on_the_default_device(capacity_factor: float | None) -> None:
    reference = {rule: router.route(*scores_on("cpu", rule)) for rule, router in routers(capacity_factor)}
    built = routers(capacity_factor)
    scores = {rule: scores_on("cpu", rule) for rule, _ in built}
    with torch.device("meta"):
        for rule, router in built:
            assignment = router.route(*scores[rule])
            assert assignment.expert_ids.device.type == "cpu", rule
            assert assignment.equals(reference[rule]), f"{rule} routes differently under another default device"


def test_bias_follows_the_scores_and_updates_there() -> None:
    router = make_router("bias_balanced", num_experts=EXPERTS, top_k=TOP_K, num_expert_groups=4, topk_groups=2)
    assignment = router.route(torch.empty(TOKENS, EXPERTS, device="meta"))
    assert router.bias.device.type == "meta"
    assert router.update_bias(assignment.expert_load).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_rules_on_cuda_never_synchronise_and_agree_with_the_cpu(capacity_factor: float | None) -> None:
    for rule, router in routers(capacity_factor):
        logits, token_ids = scores_on("cpu", rule)
        on_cpu = router.route(logits, token_ids)
        logits, token_ids = logits.cuda(), token_ids.cuda()
        router.route(logits, token_ids)  # warm-up: moves a bias or a table to the GPU once
        torch.cuda.synchronize()
        if rule not in HOST_BY_NATURE:
            torch.cuda.set_sync_debug_mode("error")
        try:
            on_gpu = router.route(logits, token_ids)
            load = on_gpu.expert_load
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert on_gpu.expert_ids.is_cuda and load.is_cuda, rule
        if rule not in RANDOM_RULES:
            assert torch.equal(on_gpu.routing_map().cpu(), on_cpu.routing_map()), rule
            assert torch.equal(load.cpu(), on_cpu.expert_load), rule


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_sync_free_rules_replay_from_a_cuda_graph(capacity_factor: float | None) -> None:
    """A rule whose shapes and control never depend on the data can be captured once and replayed.

    The random rules seed a fresh generator on every call (a pure function of the seed),
    which a graph would freeze: they are left out, as is BASE (host by nature).
    """
    for rule, router in routers(capacity_factor):
        if rule in HOST_BY_NATURE | RANDOM_RULES:
            continue
        logits, token_ids = (tensor.cuda() for tensor in scores_on("cpu", rule))
        eager = router.route(logits, token_ids)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            router.route(logits, token_ids)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = router.route(logits, token_ids)
        logits.mul_(-1)  # new scores in the same memory: the replay must route them, not the captured ones
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured.routing_map(), router.route(logits, token_ids).routing_map()), rule
        assert not torch.equal(eager.routing_map(), captured.routing_map()) or rule in SCORE_BLIND, rule
