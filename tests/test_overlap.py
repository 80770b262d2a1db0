"""All-to-all overlap across micro-batches (`simulation.alltoall_overlap: 1f1b`) and the SMs communication
kernels take from compute (`simulation.comm_sms`)."""

from __future__ import annotations

import random

import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.device import comm_stretch
from moesim.sim.layer_pairs import layer_pair_seconds
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
        chunks = rng.choice([1, 2, 4])  # interleaved with virtual stages too
        fast = run_pipeline_fast(forward, backward, micro, p2p, chunks, pair)
        assert fast == run_pipeline(forward, backward, micro, p2p, chunks, pair)[0]


def test_interleaved_pairs_take_a_chunks_share_of_the_pair() -> None:
    """One stage of two model chunks, four micro-batches (eight chunk forwards, eight chunk backwards): (v - 1) x p
    = 1 warm-up chunk forward and the overlap's one, six steady pairs of half the 2.0 s stage pair, two cool-down
    chunk backwards."""
    assert run_pipeline_fast([1.0], [2.0], 4, 0.0, 2) == pytest.approx(4 * 3.0)
    assert run_pipeline_fast([1.0], [2.0], 4, 0.0, 2, [2.0]) == pytest.approx(2 * 0.5 + 6 * 1.0 + 2 * 1.0)


def _training(**simulation) -> dict:  # type: ignore[no-untyped-def]
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 2, "gpu": "H800"},
        "parallelism": {"ep_size": 8, "pp_size": 2},
        # the MTP module left out: the two stages' layers as the assertions below count them
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 64, "train_mtp": False},
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


def test_layer_pairs_run_in_megatron_cores_three_slots() -> None:
    """Forward: attention side 3 (attention 2 + router 1), dispatch 2, experts 4, combine 1 + un-permutation 1;
    backward: combine 2 + un-permutation 1 first, experts 8, dispatch 3, attention 6, and the output head's 5
    alone. Slots: max(3, 3) + max(8, 2) + max(4, 3) + max(6, 2) = 21 (every slot's compute covers its
    communication: the longer stream, 21), plus 5."""
    forward = {"attention": 2.0, "router": 1.0, "dispatch": 2.0, "experts": 4.0, "combine": 1.0, "unpermute": 1.0}
    backward = {"combine": 2.0, "unpermute": 1.0, "experts": 8.0, "dispatch": 3.0, "attention": 6.0, "lm_head": 5.0}
    assert layer_pair_seconds(forward, backward, 11.0, 25.0) == pytest.approx(21.0 + 5.0)
    # DeepEP's SMs slow the compute that runs under the communication: 20 of 132 SMs
    stretch = 132 / 112
    expected = (3 + 3 * (stretch - 1)) + (8 + 2 * (stretch - 1)) + (4 + 3 * (stretch - 1)) + (6 + 2 * (stretch - 1))
    assert layer_pair_seconds(forward, backward, 11.0, 25.0, stretch) == pytest.approx(expected + 5.0)
    # communication the compute cannot cover stays: a 10 s dispatch outlasts the backward's 8 s of experts (the
    # longer stream over the whole pair would say 21 + 5: the compute, 21, against 18 of communication)
    slow = {**forward, "dispatch": 10.0}
    assert layer_pair_seconds(slow, backward, 19.0, 25.0) == pytest.approx(3 + 10 + 4 + 6 + 5.0)
    # time the passes hold beyond their phases (ranks waiting on each other) is not hidden
    assert layer_pair_seconds(forward, backward, 12.0, 25.0) == pytest.approx(27.0)


def test_slots_never_beat_the_longer_stream() -> None:
    rng = random.Random(5)
    names = ("attention", "router", "dispatch", "experts", "combine", "unpermute")
    for _ in range(200):
        forward = {name: rng.uniform(0.0, 3.0) for name in names}
        backward = {name: rng.uniform(0.0, 6.0) for name in names}
        comm = sum(pass_[name] for pass_ in (forward, backward) for name in ("dispatch", "combine", "unpermute"))
        compute = sum(forward.values()) + sum(backward.values()) - comm
        pair = layer_pair_seconds(forward, backward, sum(forward.values()), sum(backward.values()))
        assert max(compute, comm) - 1e-12 <= pair <= compute + comm + 1e-12


def test_deepep_holds_its_default_sms_when_comm_sms_is_unset() -> None:
    deepep = scenario_from_dict(_training(alltoall_algorithm="deepep"))
    assert comm_stretch(deepep) == pytest.approx(132 / 112)
    assert comm_stretch(scenario_from_dict(_training())) == 1.0  # NCCL's all-to-all: copy engines, as set
    assert comm_stretch(scenario_from_dict(_training(alltoall_algorithm="deepep", comm_sms=24))) == pytest.approx(
        132 / 108
    )


def test_overlap_runs_with_virtual_stages() -> None:
    """Megatron-Core's interleaved schedule with the overlap (the Qwen3-235B best practice runs it): faster than
    without, and one more chunk forward of activations in flight on each stage."""
    virtual = {"model": {"preset": "deepseek-v3", "num_layers": 8, "first_k_dense_layers": 0}}
    plain_document = {**_training(), **virtual, "parallelism": {"ep_size": 8, "pp_size": 2, "virtual_pipeline_size": 2}}
    plain = simulate(scenario_from_dict(plain_document), check_memory=False)
    overlapped = simulate(scenario_from_dict(plain_document, ["simulation.alltoall_overlap=1f1b"]), check_memory=False)
    assert overlapped.step_time_s < plain.step_time_s
    assert overlapped.phase_seconds == plain.phase_seconds
    # stage 0 keeps (p - 1) x 2 + (v - 1) x p + 1 = 5 chunk forwards in flight, 6 with the overlap
    assert overlapped.memory["activations_bytes"] == pytest.approx(plain.memory["activations_bytes"] * 6 / 5)


def test_overlap_settings_that_cannot_be_honoured_are_errors() -> None:
    with pytest.raises(MoesimError, match="simulation.comm_sms: 132 SMs"):
        scenario_from_dict(_training(comm_sms=132))
    inference = {**_training(alltoall_overlap="1f1b"), "workload": {"mode": "inference", "seq_len": 1024}}
    with pytest.raises(MoesimError, match="simulation.alltoall_overlap: modelled for training"):
        scenario_from_dict(inference)
