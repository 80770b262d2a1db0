"""DeepSeek-V3's DualPipe schedule in the closed form of its report: bubble, two chunks per rank, memory."""

from __future__ import annotations

import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.dualpipe import chunks_of, dualpipe_step
from moesim.sim.step import simulate


def test_the_bubble_is_the_reports_closed_form() -> None:
    # 8 equal ranks, pairs of 3 s, backward chunks of 2 s of which 0.5 s weight gradients, 16 micro-batches:
    # each rank runs 8 micro-batches through each of its two chunks, then waits (8/2 - 1)(3 + 2 - 3 x 0.5)
    step = dualpipe_step([2.0] * 8, [3.0] * 8, [0.5] * 8, 16)
    assert step.work_s == 16 * 3.0 and step.bubble_s == pytest.approx(3 * 3.5)
    assert step.pipeline_s == pytest.approx(48.0 + 10.5)
    assert chunks_of(0, 8) == (0, 7) and chunks_of(3, 8) == (3, 4)
    # the busiest rank decides: a slow stage 5 makes rank 2 (stages 2 and 5) the busiest
    slow = dualpipe_step([2.0] * 8, [3.0] * 5 + [4.0] + [3.0] * 2, [0.5] * 8, 16)
    assert slow.rank == 2 and slow.work_s == 8 * (3.0 + 4.0)


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
    assert any("DualPipe (closed form" in note for note in dual.notes)


def test_dualpipe_needs_what_it_is_built_on() -> None:
    with pytest.raises(MoesimError, match="DualPipe trains with an even pp_size"):
        scenario_from_dict({**_training(pipeline_schedule="dualpipe", pp_size=1), "cluster": {"num_nodes": 4}})
    with pytest.raises(MoesimError, match="DualPipe overlaps its forward and backward chunks by construction"):
        scenario_from_dict({**_training(pipeline_schedule="dualpipe"), "simulation": {"alltoall_overlap": "1f1b"}})
    with pytest.raises(MoesimError, match="pipeline_schedule: interleaved and virtual_pipeline_size 1 disagree"):
        scenario_from_dict(_training(pipeline_schedule="interleaved"))
