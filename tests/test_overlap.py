"""All-to-all overlap across micro-batches (`simulation.alltoall_overlap: 1f1b`) and the SMs communication
kernels take from compute (`simulation.comm_sms`)."""

from __future__ import annotations

import random

import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.step import simulate
from moesim.sim.timeline.clocks import run_pipeline_fast
from moesim.sim.timeline.orders import Pair, interleaved_one_f_one_b, paired
from moesim.sim.timeline.simpy_engine import run_pipeline


def test_steady_state_forwards_pair_with_the_backward_after_them() -> None:
    first, last = (paired(order) for order in interleaved_one_f_one_b(4, 8, 1)[::3])
    # stage 0: three warm-up forwards, five pairs (forward i + 3 with backward i), three cool-down backwards
    assert first[:3] == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0)]
    assert first[3:8] == [Pair((i + 3, 0), (i, 0)) for i in range(5)]
    assert first[8:] == [("B", 5, 0), ("B", 6, 0), ("B", 7, 0)]
    assert not any(isinstance(unit, Pair) for unit in last)  # the last stage's backward needs its own forward first
    # hence the overlap's one extra warm-up forward (Megatron-Core's combined 1F1B): the last stage pairs too
    shifted = paired(interleaved_one_f_one_b(4, 8, 1, extra_warmup=1)[3])
    assert shifted[0] == ("F", 0, 0) and shifted[1:8] == [Pair((i + 1, 0), (i, 0)) for i in range(7)]


def test_paired_pipelines_play_the_same_in_simpy_and_with_clocks() -> None:
    rng = random.Random(3)
    for _ in range(100):
        stages = rng.choice([2, 3, 4, 8])
        micro = stages * rng.randint(1, 4)
        forward = [rng.uniform(0.1, 1.0) for _ in range(stages)]
        backward = [rng.uniform(0.1, 2.0) for _ in range(stages)]
        pair = [rng.uniform(max(f, b), f + b) for f, b in zip(forward, backward)]
        p2p = rng.choice([0.0, 0.01])
        fast = run_pipeline_fast(forward, backward, micro, p2p, 1, pair)
        assert fast == run_pipeline(forward, backward, micro, p2p, 1, pair)[0]


def test_steady_pairs_save_the_hidden_time() -> None:
    # one stage: F0, then (F1, B0), (F2, B1), (F3, B2) as 2.0 s pairs, then B3: 1 + 3 x 2 + 2
    assert run_pipeline_fast([1.0], [2.0], 4, 0.0, 1, [2.0]) == pytest.approx(9.0)
    # equal stages, many micro-batches: the steady state runs pairs of 2.0 s instead of 3.0 s
    plain = run_pipeline_fast([1.0] * 4, [2.0] * 4, 64, 0.0)
    overlapped = run_pipeline_fast([1.0] * 4, [2.0] * 4, 64, 0.0, 1, [2.0] * 4)
    assert plain == pytest.approx((64 + 3) * 3.0)
    assert overlapped == pytest.approx(64 * 2.0 + 10.0)  # 64 pairs' worth, plus warm-up and cool-down
    assert run_pipeline_fast([1.0] * 4, [2.0] * 4, 64, 0.0, 1, [3.0] * 4) == pytest.approx(plain)  # nothing hidden


def _training(**simulation) -> dict:  # type: ignore[no-untyped-def]
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 2, "gpu": "H800"},
        "parallelism": {"ep_size": 8, "pp_size": 2},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64},
        "simulation": {"network_mode": "fast", **simulation},
    }


def test_overlap_hides_communication_and_comm_sms_slow_the_compute() -> None:
    plain = simulate(scenario_from_dict(_training()), check_memory=False)
    overlapped = simulate(scenario_from_dict(_training(alltoall_overlap="1f1b")), check_memory=False)
    shared = simulate(scenario_from_dict(_training(alltoall_overlap="1f1b", comm_sms=20)), check_memory=False)
    assert overlapped.step_time_s < shared.step_time_s < plain.step_time_s
    assert overlapped.phase_seconds == plain.phase_seconds  # the same work, run at once
    # one more micro-batch in flight: the heaviest stage (the last, two MoE layers) keeps 2 instead of 1
    assert overlapped.memory["activations_bytes"] == plain.memory["activations_bytes"] * 2
    assert any("communication hidden" in note and "20 of 132 SMs" in note for note in shared.notes)


def test_overlap_settings_that_cannot_be_honoured_are_errors() -> None:
    with pytest.raises(MoesimError, match="simulation.comm_sms: 132 SMs"):
        scenario_from_dict(_training(comm_sms=132))
    inference = {**_training(alltoall_overlap="1f1b"), "workload": {"mode": "inference", "seq_len": 1024}}
    with pytest.raises(MoesimError, match="simulation.alltoall_overlap: modelled for training"):
        scenario_from_dict(inference)
