"""DeepSeek-V3's DualPipe schedule, played op by op: its order, its bubble against the report's closed form, two
chunks per rank, and the settings it needs."""

from __future__ import annotations

import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.step import simulate
from moesim.sim.timeline.dualpipe import (
    Backward,
    Forward,
    ForwardBackward,
    WeightGradient,
    chunks_of,
    dualpipe_step,
    rank_ops,
)


@pytest.mark.parametrize("ranks, micro_batches", [(4, 8), (8, 20), (16, 120)])
def test_every_rank_runs_each_micro_batch_once_in_each_direction(ranks: int, micro_batches: int) -> None:
    for rank in range(ranks):
        counts = {("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0}
        deferred = weights = 0
        for op in rank_ops(rank, ranks, micro_batches):
            if isinstance(op, ForwardBackward):
                counts[("F", op.forward_direction)] += 1
                counts[("B", op.backward_direction)] += 1
            elif isinstance(op, Forward):
                counts[("F", op.direction)] += 1
            elif isinstance(op, Backward):
                counts[("B", op.direction)] += 1
                deferred += op.deferred_weight
            else:
                assert isinstance(op, WeightGradient)
                weights += 1
        assert set(counts.values()) == {micro_batches // 2} and deferred == weights
    assert chunks_of(0, 8) == (0, 7) and chunks_of(3, 8) == (3, 4)


@pytest.mark.parametrize("ranks, micro_batches", [(4, 16), (8, 20), (8, 32), (16, 64)])
def test_the_bubble_is_the_reports_closed_form_within_one_forward(ranks: int, micro_batches: int) -> None:
    # equal stages, nothing to overlap (a pair is F + B): the report's (pp/2 - 1)(F&B + B - 3W)
    step = dualpipe_step([1.0] * ranks, [2.0] * ranks, [0.5] * ranks, [(0.0, 0.0)] * ranks, micro_batches)
    assert step.work_s == pytest.approx(micro_batches * 3.0)
    closed_form = (ranks / 2 - 1) * (3.0 + 2.0 - 3 * 0.5)
    assert abs(step.pipeline_s - step.work_s - closed_form) <= 1.0
    # collectives that a pair hides shorten the step
    hidden = dualpipe_step([1.0] * ranks, [2.0] * ranks, [0.5] * ranks, [(0.5, 1.0)] * ranks, micro_batches)
    assert hidden.pipeline_s < step.pipeline_s


@pytest.mark.parametrize("ranks, micro_batches", [(4, 16), (8, 32)])
def test_the_busiest_ranks_work_in_table_4s_parts(ranks: int, micro_batches: int) -> None:
    """Counted from the order (`rank_ops`): a rank's forwards alone cost F, its backwards alone B (less W when
    deferred), its deferred weight gradients W, its pairs F + B when nothing overlaps; they add up to its work."""
    step = dualpipe_step([1.0] * ranks, [2.0] * ranks, [0.5] * ranks, [(0.0, 0.0)] * ranks, micro_batches)
    ops = rank_ops(step.rank, ranks, micro_batches)
    forwards = sum(isinstance(op, Forward) for op in ops)
    pairs = sum(isinstance(op, ForwardBackward) for op in ops)
    backwards = [op for op in ops if isinstance(op, Backward)]
    deferred = sum(op.deferred_weight for op in backwards)
    assert step.parts["1F"] == pytest.approx(forwards * 1.0)
    assert step.parts["1B"] == pytest.approx(len(backwards) * 2.0 - deferred * 0.5)
    assert step.parts["1W"] == pytest.approx(deferred * 0.5)
    assert step.parts["1F1B"] == pytest.approx(pairs * 3.0)
    assert sum(step.parts.values()) == pytest.approx(step.work_s)


def _training(**parallelism) -> dict:  # type: ignore[no-untyped-def]
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 8, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 4, "gpu": "H800"},
        "parallelism": {"ep_size": 8, "pp_size": 4, **parallelism},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64},
        "simulation": {"network_mode": "fast"},
    }


def test_dualpipe_beats_1f1b_and_holds_two_chunks() -> None:
    plain = simulate(scenario_from_dict(_training()), check_memory=False)
    dual = simulate(scenario_from_dict(_training(pipeline_schedule="dualpipe")), check_memory=False)
    assert dual.step_time_s < plain.step_time_s and dual.breakdown["overlap_hidden_s"] < 0
    assert sum(dual.breakdown.values()) == pytest.approx(dual.step_time_s)
    assert dual.memory["weights_bytes"] > 1.5 * plain.memory["weights_bytes"]  # two copies of the parameters
    assert any("DualPipe (DeepSeek's schedule" in note for note in dual.notes)


def test_dualpipe_needs_what_it_is_built_on() -> None:
    with pytest.raises(MoesimError, match="DualPipe trains with an even pp_size"):
        scenario_from_dict({**_training(pipeline_schedule="dualpipe", pp_size=1), "cluster": {"num_nodes": 4}})
    with pytest.raises(MoesimError, match="at least 2 x pp_size"):
        scenario_from_dict(
            {
                **_training(pipeline_schedule="dualpipe"),
                "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 48},
            }
        )
    with pytest.raises(MoesimError, match="DualPipe overlaps its forward and backward chunks by construction"):
        scenario_from_dict({**_training(pipeline_schedule="dualpipe"), "simulation": {"alltoall_overlap": "1f1b"}})
    with pytest.raises(MoesimError, match="pipeline_schedule: interleaved and virtual_pipeline_size 1 disagree"):
        scenario_from_dict(_training(pipeline_schedule="interleaved"))
