"""The attention ranks of an EP group: taken as alike, and what the slowest would add were they dealt requests at
random (the expected largest of G normal draws, in closed form for two)."""

from __future__ import annotations

import math

import pytest

from moesim.serving.ranks import AttentionRecorder, expected_largest_normal, ranks_per_group


def test_the_expected_largest_of_normal_draws() -> None:
    assert expected_largest_normal(1) == 0.0
    assert expected_largest_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)
    assert expected_largest_normal(8) == pytest.approx(1.4236, abs=1e-3)  # tables of normal order statistics
    assert expected_largest_normal(144) > expected_largest_normal(32) > expected_largest_normal(8)


class _Iterations:
    """Iterations of 10 ms, their attention 2 or 4 ms in turn (a spread of 1 ms)."""

    calls = 0

    def seconds(self, *batch: float) -> float:
        return 0.010

    def attention_seconds(self, *batch: float) -> float:
        self.calls += 1
        return 0.002 if self.calls % 2 else 0.004


def test_the_slowest_rank_adds_its_spread_times_the_largest_draw() -> None:
    recorder = AttentionRecorder(_Iterations())  # type: ignore[arg-type]
    for _ in range(100):
        recorder.seconds(0, 0.0, 64, 1000.0)
    extra, spread = recorder.slowest_extra(8)
    assert spread == pytest.approx(0.001)
    assert extra == pytest.approx(expected_largest_normal(8) * 0.001 / 0.010)


def test_only_ranks_that_meet_in_an_all_to_all_count() -> None:
    from moesim.scenario import scenario_from_dict

    base = {"model": {"preset": "olmoe-1b-7b", "num_layers": 2}, "cluster": {"num_nodes": 1, "gpus_per_node": 8}}
    dep = scenario_from_dict({**base, "parallelism": {"ep_size": 8, "tp_size": 2}})
    replicas = scenario_from_dict({**base, "parallelism": {"ep_size": 1, "tp_size": 2, "expert_tp_size": 2}})
    assert ranks_per_group(dep) == 4 and ranks_per_group(replicas) == 1
