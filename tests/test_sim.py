"""The simulator: closed forms, hand calculations, monotonicity and reproducibility."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import moesim
from moesim import scenario_from_dict
from moesim.cli import app
from moesim.cluster.topology import Topology
from moesim.cost import model_for_gpu, model_from_profile
from moesim.errors import MoesimError, ScenarioError
from moesim.sim.collectives import Traffic, all_reduce_time, all_to_all
from moesim.sim.phase import Phase
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import LayerRouting
from moesim.sim.step import simulate
from moesim.sim.timeline.clocks import run_stage_fast
from moesim.sim.timeline.orders import one_f_one_b
from moesim.sim.timeline.simpy_engine import run_pipeline, run_stage

REPO = Path(__file__).resolve().parent.parent


def small_training(**sections: Any) -> dict[str, Any]:
    """OLMoE-sized model cut to 2 layers on one 8 x H100 node: fast to simulate."""
    document: dict[str, Any] = {
        "name": "small",
        "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
        "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "training", "micro_batch_size": 2, "seq_len": 1024, "expert_popularity_skew": 0.8},
        "routing": {"strategy": "top_k", "capacity_factor": 1.0},
        "simulation": {"max_routed_tokens": 8192},
    }
    for key, value in sections.items():
        document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
    return document


def test_same_scenario_same_numbers_bit_for_bit() -> None:
    first = simulate(scenario_from_dict(small_training()))
    again = simulate(scenario_from_dict(small_training()))
    assert first.as_dict() == again.as_dict()


def test_doubling_link_bandwidth_never_slows_a_step() -> None:
    base = small_training(cluster={"num_nodes": 2, "gpus_per_node": 4}, parallelism={"ep_size": 8})
    slow = simulate(scenario_from_dict(base))
    fast_links = simulate(scenario_from_dict(base, ["cluster.nic_gbps=800", "cluster.scale_up_gb_per_s=900"]))
    assert fast_links.step_time_s <= slow.step_time_s
    assert fast_links.phase_seconds["dispatch"] < slow.phase_seconds["dispatch"]


def test_capacity_factor_and_dropless() -> None:
    drops = [
        simulate(scenario_from_dict(small_training(routing={"capacity_factor": factor}))).drop_rate
        for factor in (0.75, 1.0, 1.5, 3.0)
    ]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    dropless = simulate(scenario_from_dict(small_training(routing={"capacity_factor": None})))
    assert dropless.drop_rate == 0.0


def test_fast_and_full_modes_agree_on_one_switch() -> None:
    full = simulate(scenario_from_dict(small_training(simulation={"max_routed_layers": 1})))
    fast = simulate(scenario_from_dict(small_training(simulation={"network_mode": "fast"})))
    assert fast.step_time_s == pytest.approx(full.step_time_s, rel=0.02)


def uniform_routing(ranks: int, tokens_per_rank: int, bytes_per_token: float) -> LayerRouting:
    """One expert per rank, every rank sends the same number of tokens to every rank (top-1)."""
    per_pair = tokens_per_rank / ranks
    return LayerRouting(
        expert_tokens=np.full(ranks, float(tokens_per_rank)),
        traffic=Traffic(
            np.arange(ranks), np.full((ranks, ranks), per_pair * bytes_per_token), np.full((ranks, 1), 0.0)
        ),
        dropped_pairs=0.0,
        requested_pairs=float(ranks * tokens_per_rank),
        load_imbalance=1.0,
        rank_rows=[np.array([float(tokens_per_rank)])] * ranks,
    )


def test_one_moe_layer_matches_the_hand_calculation() -> None:
    """One node, one expert per GPU, perfectly uniform routing: every phase by hand."""
    scenario = scenario_from_dict(
        {
            "model": {
                "preset": "tiny-moe",
                "num_layers": 1,
                "hidden_size": 1024,
                "num_attention_heads": 8,
                "num_key_value_heads": 8,
                "moe_intermediate_size": 4096,
                "num_experts": 8,
                "top_k": 1,
            },
            # the datasheet link (450 GB/s, 2 us a message): a closed form; NCCL's measured curves have their own test
            "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "H100-SXM", "scale_up_collectives": "datasheet"},
            "parallelism": {"ep_size": 8},
            "workload": {"micro_batch_size": 1, "seq_len": 4096},
            "simulation": {"overlap_shared_experts": False},
        }
    )
    plan = StagePlan(scenario)
    topology = Topology.from_cluster(scenario.cluster)
    cost = model_for_gpu(scenario.cluster.gpu)
    tokens, hidden = 4096, 1024
    routing = uniform_routing(8, tokens, hidden * 2)
    program = PhaseBuilder(scenario, plan, cost, topology, tokens, 4096).stage_program(0, [routing], 0)
    names = [phase.name for phase in program.forward]
    assert names == [
        "embedding",
        "attention",
        "router",
        "permute",
        "dispatch",
        "experts",
        "combine",
        "unpermute",
        "lm_head",
    ]
    # dispatch: the count exchange (alpha), then alpha + each rank's buffer x 7/8 over its NVLink port (450 GB/s
    # one way)
    buffer = tokens * hidden * 2
    expected_alltoall = 2e-6 + buffer * 7 / 8 / 450e9
    dispatch = program.forward[names.index("dispatch")]
    combine = program.forward[names.index("combine")]
    assert float(dispatch.seconds[0]) == pytest.approx(2e-6 + expected_alltoall, rel=1e-6)
    assert float(combine.seconds[0]) == pytest.approx(expected_alltoall, rel=1e-6)
    # experts: one expert per rank with `tokens` rows, SwiGLU: [T x h] @ [h x 2f], activation, [T x f] @ [f x h],
    # each projection a grouped GEMM of the shipped H100 profile written out: whole tiles in whole waves over 132
    # multiprocessors against bytes moved, blended by a p-norm, plus the overhead left inside a stream
    f = 4096
    profile = json.loads((Path(moesim.__file__).parent / "cost" / "shipped" / "H100-SXM.json").read_text())
    g = profile["grouped_gemm"]
    overhead = max(profile["kernel_launch_s"], g["overhead_s"] - profile["timing_overhead_s"])

    def grouped_by_hand(rows: int, inner: int, cols: int) -> float:
        waves = math.ceil(math.ceil(rows / g["tile_rows"]) * math.ceil(cols / g["tile_cols"]) / 132)
        compute = waves * (
            2 * g["tile_rows"] * g["tile_cols"] * inner / (g["peak_flops"] / 132 * g["compute_efficiency"])
            + g["tile_overhead_s"]
        )
        memory = 2 * (inner * cols + rows * inner + rows * cols) / (g["bandwidth_bytes_per_s"] * g["memory_efficiency"])
        p = g["sharpness"]
        return overhead + (compute**p + memory**p) ** (1 / p)

    bandwidth = profile["memory_bytes_per_s"] * profile["memory_efficiency"]
    # gate activation (read, write), product (two reads, a write): two kernels, each with its launch in the stream
    activation = tokens * 5 * f * 2 / bandwidth + 2 * profile["kernel_launch_s"]
    experts = program.forward[names.index("experts")]
    offsets = 2 * profile["kernel_launch_s"]  # the executor's group offsets: a cumulative sum and a cast
    assert np.allclose(
        experts.seconds,
        grouped_by_hand(tokens, hidden, 2 * f) + activation + grouped_by_hand(tokens, f, hidden) + offsets,
    )
    # the whole pass is the sum of its phases (every rank equal, nobody waits), in both timelines
    total = sum(float(phase.seconds[0]) for phase in program.forward)
    simpy_time, slices = run_stage(program.forward, 8, "forward")
    fast_time, busy = run_stage_fast(program.forward, 8)
    assert simpy_time == pytest.approx(total) and fast_time == pytest.approx(total)
    assert "wait" not in busy and not [s for s in slices if s.name == "wait"]


def random_program(rng: np.random.Generator, ranks: int, chunks: int) -> list[Phase]:
    phases: list[Phase] = []
    for layer in range(3):
        phases.append(Phase("attention", layer, rng.uniform(1, 2, ranks)))
        shared = Phase("shared_experts", layer, rng.uniform(0, 3, ranks))
        phases.append(
            Phase(
                "dispatch",
                layer,
                np.array([rng.uniform(0.5, 2)]),
                collective=True,
                overlapped=shared if layer != 1 else None,
                chunks=chunks,
                detail={"latency": 0.1},
            )
        )
        phases.append(Phase("experts", layer, rng.uniform(1, 5, ranks), chunks=chunks))
        phases.append(
            Phase(
                "combine",
                layer,
                np.array([rng.uniform(0.5, 2)]),
                collective=True,
                chunks=chunks,
                detail={"latency": 0.1},
            )
        )
    return phases


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_fast_timeline_equals_simpy(chunks: int) -> None:
    rng = np.random.default_rng(chunks)
    for _ in range(5):
        program = random_program(rng, 6, chunks)
        simpy_time, slices = run_stage(program, 6, "forward")
        fast_time, busy = run_stage_fast(program, 6)
        assert fast_time == pytest.approx(simpy_time)
        waits = sum(s.end - s.start for s in slices if s.name == "wait") / 6
        assert busy.get("wait", 0.0) == pytest.approx(waits)


def test_chunking_overlaps_dispatch_with_experts() -> None:
    rng = np.random.default_rng(0)
    one = run_stage_fast(random_program(rng, 4, 1), 4)[0]
    rng = np.random.default_rng(0)
    four = run_stage_fast(random_program(rng, 4, 4), 4)[0]
    assert four < one


def test_one_f_one_b_closed_form() -> None:
    """p stages of equal forward f and backward b, m micro-batches: (m + p - 1) x (f + b)."""
    for stages, micro in [(1, 4), (4, 4), (4, 16), (8, 3)]:
        seconds, _ = run_pipeline([1.0] * stages, [2.0] * stages, micro, 0.0)
        assert seconds == pytest.approx((micro + stages - 1) * 3.0)
        order = one_f_one_b(stages, micro)
        assert all(
            sorted(order[s]) == sorted([("F", m) for m in range(micro)] + [("B", m) for m in range(micro)])
            for s in range(stages)
        )


def test_all_reduce_closed_form() -> None:
    topology = Topology(1, 8, 450e9, 8, 50e9)
    size = 1e9
    assert all_reduce_time(topology, np.arange(8), size, "ring") == pytest.approx(2 * 7 / 8 * size / 450e9 + 14 * 2e-6)
    two_nodes = Topology(2, 8, 450e9, 8, 50e9)
    ring = all_reduce_time(two_nodes, np.arange(16), size, "ring")
    hierarchical = all_reduce_time(two_nodes, np.arange(16), size, "hierarchical")
    assert all_reduce_time(two_nodes, np.arange(16), size, "auto") == min(ring, hierarchical)


def test_alltoall_algorithms_on_two_nodes() -> None:
    """Each token goes to 4 GPUs of the other node: node dedup sends it across once instead of 4 times."""
    topology = Topology(2, 8, 450e9, 8, 50e9, kind="rail_optimized")
    members = 16
    rank_bytes = np.zeros((members, members))
    for source in range(members):
        other = 8 if source < 8 else 0
        rank_bytes[source, other : other + 4] = 1e6
    node_bytes = np.zeros((members, 2))
    for source in range(members):
        node_bytes[source, 1 if source < 8 else 0] = 1e6
    traffic = Traffic(np.arange(members), rank_bytes, node_bytes)
    flat = all_to_all(topology, traffic, "flat")
    hierarchical = all_to_all(topology, traffic, "hierarchical")
    deepep = all_to_all(topology, traffic, "deepep")
    assert flat.bytes_across_nodes == pytest.approx(16 * 4e6)
    assert deepep.bytes_across_nodes == pytest.approx(16 * 1e6)
    assert deepep.seconds < flat.seconds
    assert hierarchical.bytes_across_nodes == pytest.approx(flat.bytes_across_nodes)


def test_memory_does_not_fit_says_by_how_much() -> None:
    document = {
        "model": "mixtral-8x22b",
        "cluster": {"num_nodes": 1, "gpus_per_node": 8},
        "parallelism": {"ep_size": 8},
    }
    with pytest.raises(MoesimError, match=r"does not fit: .* short by [0-9.]+ GB"):
        simulate(scenario_from_dict(document))
    plan = StagePlan(scenario_from_dict(document))
    from moesim.sim.memory import memory_per_gpu

    zero1 = memory_per_gpu(scenario_from_dict(document), plan).total_bytes
    zero3 = memory_per_gpu(scenario_from_dict(document, ["parallelism.zero_stage=3"]), plan).total_bytes
    recompute = memory_per_gpu(scenario_from_dict(document, ["workload.activation_recompute=full"]), plan).total_bytes
    assert zero3 < zero1 and recompute < zero1


def test_inference_reports_prefill_and_decode() -> None:
    result = simulate(
        scenario_from_dict(
            {
                "model": {"preset": "mixtral-8x7b", "num_layers": 4},
                "cluster": {"num_nodes": 1, "gpus_per_node": 8},
                "parallelism": {"ep_size": 8},
                "workload": {"mode": "inference", "micro_batch_size": 4, "seq_len": 512, "decode_tokens": 16},
                "simulation": {"max_routed_tokens": 4096},
            }
        )
    )
    assert result.prefill_s > 0 and result.decode_step_s > 0
    assert result.step_time_s == pytest.approx(result.prefill_s + 16 * result.decode_step_s)
    assert result.memory["kv_cache_bytes"] > 0


def test_run_command_and_trace(tmp_path: Path) -> None:
    runner = CliRunner()
    scenario = REPO / "scenarios" / "mixtral-8x7b-serving.yaml"
    overrides = [
        "--set",
        "model.num_layers=2",
        "--set",
        "simulation.max_routed_tokens=4096",
        "--set",
        "workload.decode_tokens=4",
    ]
    trace = tmp_path / "trace.json"
    result = runner.invoke(app, ["run", str(scenario), *overrides, "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    assert "time per phase" in result.output and "MFU" in result.output
    events = json.loads(trace.read_text())["traceEvents"]
    tracks = {event["tid"] for event in events if event.get("ph") == "X" and event["pid"] == 1}
    assert tracks == set(range(8))
    data = json.loads(runner.invoke(app, ["run", str(scenario), *overrides, "--json"]).output)
    assert {"step_time_s", "phase_seconds", "tokens_per_s_per_gpu", "mfu", "drop_rate", "memory"} <= set(data)
    too_big = runner.invoke(
        app, ["run", str(scenario), "--set", "model=mixtral-8x22b", "--set", "workload.micro_batch_size=512"]
    )
    assert too_big.exit_code == 2 and "does not fit" in too_big.output


def test_hot_expert_replicas_shorten_the_expert_phase() -> None:
    skewed = small_training(workload={"expert_popularity_skew": 1.5}, routing={"capacity_factor": None})
    plain = simulate(scenario_from_dict(skewed))
    replicated = simulate(scenario_from_dict(skewed, ["simulation.redundant_experts=8"]))
    assert replicated.phase_seconds["experts"] + replicated.phase_seconds.get("wait", 0) < (
        plain.phase_seconds["experts"] + plain.phase_seconds.get("wait", 0)
    )


def test_placement_replicas() -> None:
    from moesim.cluster.placement import Placement

    load = np.array([100.0, 10, 10, 10, 10, 10, 10, 10])
    placement = Placement(8, 4).with_hot_replicas(load, 2)
    share = placement.shares()
    assert np.allclose(share.sum(axis=1), 1.0)
    assert (share[0] > 0).sum() == 3  # the hot expert got both extra copies
    rank_load = load @ share
    assert rank_load.max() < (load @ Placement(8, 4).shares()).max()
    assert placement.copies_per_rank.sum() == 10
    # each (token, expert) pair goes to one copy, in proportion to the copies' shares
    slots = placement.slot_ranks(torch.zeros((3000, 1), dtype=torch.long))
    counts = np.bincount(slots.numpy().ravel(), minlength=4) / 3000
    assert np.allclose(counts, share[0], atol=0.01)


def test_replicated_experts_keep_the_dispatch_deduplicated() -> None:
    """With redundant experts a token still crosses to a node once and to a rank once: DeepSeek-V3's top-8 on 4
    nodes of 8 (EP 32, 32 redundant copies) sends each token to at most 4 nodes and 8 ranks, the node bytes at most
    the rank bytes."""
    from moesim.cluster.topology import Topology
    from moesim.sim.routing_load import route_layers

    document = {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
        "cluster": {"preset": "hgx-h800", "num_nodes": 4},
        "parallelism": {"ep_size": 32},
        "workload": {"mode": "inference", "seq_len": 512},
        "simulation": {"redundant_experts": 32, "max_routed_tokens": 512 * 32},
    }
    scenario = scenario_from_dict(document)
    (layer,), _ = route_layers(scenario, [3], 512 * 32, Topology.from_cluster(scenario.cluster).gpus_per_node)
    token = scenario.workload.precision.token_bytes(7168, "dispatch")
    per_token_nodes = layer.traffic.node_bytes.sum() / token / (512 * 32)
    per_token_ranks = layer.traffic.rank_bytes.sum() / token / (512 * 32)
    assert 1 < per_token_nodes <= 4 and per_token_nodes < per_token_ranks <= 8


def test_cost_profile_replaces_the_curve(tmp_path: Path) -> None:
    profile = tmp_path / "cpu.json"
    profile.write_text(
        json.dumps(
            {
                "device": "test-cpu",
                "peak_flops": 1e12,
                "memory_bytes_per_s": 1e11,
                "gemm_efficiency": {"rows": [1, 64, 4096], "efficiency": [0.01, 0.2, 0.6]},
            }
        )
    )
    model = model_from_profile(profile)
    assert model.efficiency(64) == pytest.approx(0.2) and model.efficiency(1e6) == pytest.approx(0.6)
    assert "measured profile" in model.source
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(MoesimError, match="not a usable cost profile"):
        model_from_profile(bad)
    result = simulate(scenario_from_dict(small_training(simulation={"cost_profile": str(profile)})))
    assert any("measured profile" in note for note in result.notes)


def test_simulation_replays_a_recorded_trace(tmp_path: Path) -> None:
    from moesim.workload import SyntheticScores, save_trace

    scores = SyntheticScores(num_tokens=2048, num_experts=64, num_layers=2, expert_popularity_skew=1.0)
    trace = save_trace(tmp_path / "scores.npz", list(scores.step(0)))
    document = small_training(workload={"scores": "trace", "trace_path": str(trace)})
    replayed = simulate(scenario_from_dict(document))
    assert replayed.load_imbalance > 1.5  # the trace's skew, not the scenario's synthetic knobs
    wrong = small_training(
        model={"preset": "olmoe-1b-7b", "num_layers": 2, "num_experts": 32},
        workload={"scores": "trace", "trace_path": str(trace)},
    )
    with pytest.raises(MoesimError, match="the trace has 64 experts"):
        simulate(scenario_from_dict(wrong))


def test_mfu_counts_model_flops_and_hfu_the_recomputed_ones_too() -> None:
    from moesim.models import accounting

    scenario = scenario_from_dict(small_training(workload={"activation_recompute": "full"}))
    result = simulate(scenario)
    model_flops = 6 * accounting.forward_flops_per_token(scenario.model, 1024) / 2 * result.tokens_per_step
    assert result.mfu == pytest.approx(model_flops / (result.step_time_s * 8 * 989.4e12), rel=1e-9)
    assert result.hfu == pytest.approx(result.mfu * 4 / 3, rel=1e-9)  # a full recomputation replays the forward


@pytest.mark.parametrize("stages, micro, chunks", [(4, 8, 1), (4, 8, 2), (4, 12, 3), (2, 4, 4)])
def test_interleaved_1f1b_bubble_shrinks_by_the_chunks(stages: int, micro: int, chunks: int) -> None:
    """Equal stages, no transfer time: (m + (p - 1) / v) x (f + b), Narayanan et al. 2021 (interleaved schedule)."""
    forward, backward = 1.0, 2.0
    total, slices = run_pipeline([forward] * stages, [backward] * stages, micro, 0.0, chunks)
    assert total == pytest.approx((micro + (stages - 1) / chunks) * (forward + backward))
    assert len(slices) == 2 * stages * micro * chunks  # every chunk of every micro-batch, forward and backward


def test_virtual_pipeline_size_is_checked_and_shortens_the_step() -> None:
    document = small_training(
        model={"preset": "olmoe-1b-7b", "num_layers": 8},
        parallelism={"ep_size": 4, "pp_size": 2},
        workload={"micro_batch_size": 1, "global_batch_size": 16},
    )
    plain = simulate(scenario_from_dict(document), check_memory=False)
    interleaved = simulate(
        scenario_from_dict(
            small_training(**{**document, "parallelism": {**document["parallelism"], "virtual_pipeline_size": 2}})
        ),
        check_memory=False,
    )
    assert interleaved.pipeline_bubble_s < plain.pipeline_bubble_s
    with pytest.raises(MoesimError, match="virtual_pipeline_size"):
        scenario_from_dict(small_training(parallelism={"virtual_pipeline_size": 2}))


def test_interleaving_holds_more_activations_in_flight() -> None:
    from moesim.sim.memory import memory_per_gpu
    from moesim.sim.plan import StagePlan

    document = small_training(
        model={"preset": "olmoe-1b-7b", "num_layers": 8},
        parallelism={"ep_size": 2, "pp_size": 4},
        workload={"micro_batch_size": 1, "global_batch_size": 16},
    )
    plain = scenario_from_dict(document)
    interleaved = scenario_from_dict(
        small_training(**{**document, "parallelism": {**document["parallelism"], "virtual_pipeline_size": 2}})
    )
    ratio = (
        memory_per_gpu(interleaved, StagePlan(interleaved)).activations_bytes
        / memory_per_gpu(plain, StagePlan(plain)).activations_bytes
    )
    assert ratio == pytest.approx(1 + (4 - 1) / (4 * 2))  # Narayanan et al. 2021, section 2.2


def test_chunked_prefill_bounds_activations_and_keeps_the_prefill_work() -> None:
    base = {
        "model": {"preset": "olmoe-1b-7b", "num_layers": 2},
        "cluster": {"num_nodes": 1, "gpus_per_node": 8},
        "parallelism": {"ep_size": 8},
        "simulation": {"network_mode": "fast"},
        "workload": {"mode": "inference", "micro_batch_size": 8, "seq_len": 4096, "decode_tokens": 4},
    }

    def run(chunk):  # type: ignore[no-untyped-def]
        return simulate(scenario_from_dict({**base, "workload": {**base["workload"], "prefill_chunk_tokens": chunk}}))

    whole, chunked, tiny = run(None), run(8192), run(512)
    assert chunked.memory["activations_bytes"] == pytest.approx(whole.memory["activations_bytes"] / 4)  # 32K -> 8K
    assert chunked.memory["alltoall_buffer_bytes"] == pytest.approx(whole.memory["alltoall_buffer_bytes"] / 4)
    # four chunks do the whole pass's work: the same FLOPs, a little more fixed cost per kernel
    assert whole.prefill_s <= chunked.prefill_s < 1.15 * whole.prefill_s
    assert tiny.prefill_s > chunked.prefill_s  # 64 small chunks pay their fixed costs 64 times
    assert chunked.decode_step_s == whole.decode_step_s
    assert any("in 4 chunks of 8,192 tokens per rank" in note for note in chunked.notes)


def test_deepseek_places_256_experts_and_32_redundant_copies_on_144_ranks() -> None:
    """DeepSeek's decode unit: EP 144 does not divide 256 experts; homes differ by at most one expert a rank. With
    the 32 redundant copies EPLB places 288 copies two a GPU, heaviest first on the least loaded GPU: the hottest
    experts get the copies, and the busiest GPU carries no more than the heaviest copy plus the lightest one."""
    from moesim.cluster.placement import Placement

    placement = Placement(256, 144)
    homes = np.bincount(placement.expert_rank.numpy(), minlength=144)
    assert homes.min() == 1 and homes.max() == 2 and homes.sum() == 256
    assert np.all(np.diff(placement.expert_rank.numpy()) >= 0)  # contiguous
    with pytest.raises(ValueError, match="not divisible"):
        placement.experts_per_rank
    load = np.linspace(2.0, 1.0, 256)  # hotter experts first
    balanced = placement.with_hot_replicas(load, 32)
    assert balanced.copies_per_rank.sum() == 288 and set(balanced.copies_per_rank.tolist()) == {2}
    copies = (balanced.shares() > 0).sum(axis=1)
    assert copies[:32].tolist() == [2] * 32 and copies[32:].max() == 1  # the 32 hottest experts are replicated
    rank_load = load @ balanced.shares()
    assert rank_load.max() < (load @ placement.shares()).max()
    assert rank_load.max() <= (load / copies).max() + (load / copies).min() + 1e-9
    document = {
        "model": "deepseek-v3",
        "cluster": {"preset": "hgx-h800", "num_nodes": 18},
        "parallelism": {"ep_size": 144},
        "workload": {"mode": "inference"},
    }
    with pytest.raises(ScenarioError, match="redundant experts that fill"):
        scenario_from_dict(document)
    assert scenario_from_dict(document, ["simulation.redundant_experts=32"]).parallelism.ep_size == 144


def test_the_timeline_is_a_setting_of_its_own() -> None:
    """`simulation.timeline` picks the engine, whatever the network mode; by default full mode runs SimPy and fast
    mode the clocks; both engines give the same step, and only SimPy records spans."""
    from moesim.sim.timeline import timeline_name

    document = small_training(parallelism={"ep_size": 4, "pp_size": 2}, workload={"global_batch_size": 16})
    assert timeline_name(scenario_from_dict(document)) == "simpy"
    assert timeline_name(scenario_from_dict(document, ["simulation.network_mode=fast"])) == "clocks"
    simpy_run = simulate(scenario_from_dict(document, ["simulation.timeline=simpy"]))
    clocks_run = simulate(scenario_from_dict(document, ["simulation.timeline=clocks"]))
    assert simpy_run.slices and not clocks_run.slices
    assert clocks_run.step_time_s == pytest.approx(simpy_run.step_time_s, rel=1e-12)
    assert clocks_run.phase_seconds == pytest.approx(simpy_run.phase_seconds, rel=1e-9)
    fast_on_simpy = simulate(
        scenario_from_dict(document, ["simulation.network_mode=fast", "simulation.timeline=simpy"])
    )
    assert fast_on_simpy.slices
    with pytest.raises(ScenarioError, match="simulation.timeline"):
        scenario_from_dict(document, ["simulation.timeline=events"])
