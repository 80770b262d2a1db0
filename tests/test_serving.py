"""Serving under continuous batching: the engine loop against hand-worked timelines, and the deployment's latency
and throughput from the simulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.scenario.serving import ServingSpec
from moesim.serving import simulate_serving
from moesim.serving.engine import run_engine


def linear(
    prefill: int, prefill_context: float, decode: int, decode_context: float, drafts: int = 0, sampled: int = 0
) -> float:
    """A made-up engine: 1 ms per prompt token, 0.1 ms per decode token, 10 ms per iteration, 1 ms per draft."""
    return 0.010 + 0.001 * prefill + 0.0001 * decode + 0.001 * drafts


def test_one_request_at_a_time_follows_the_iterations() -> None:
    spec = ServingSpec(input_tokens=1000, output_tokens=10, arrival="closed", concurrency=1, num_requests=3)
    run = run_engine(spec, linear, kv_capacity_tokens=10**6, ranks=1)
    first = run.requests[0]
    assert first.first_token_s == pytest.approx(1.010)  # one iteration of the whole prompt
    # nine more tokens, one decode iteration each (10.1 ms), then the next request starts
    assert first.finish_s == pytest.approx(1.010 + 9 * 0.0101)
    assert run.requests[1].arrival_s == pytest.approx(first.finish_s) and run.iterations == 3 * 10
    assert run.mean_running == pytest.approx(1.0) and run.peak_running == 1


@pytest.mark.parametrize("plain_engine", ["vllm", "sglang"])
def test_an_overlap_scheduler_reports_each_token_one_iteration_later(plain_engine: str) -> None:
    """TensorRT-LLM's scheduler launches the next iteration before this one's tokens are processed: the first token
    is reported at the end of the iteration after the prompt's (the request already decoding in it), and a finished
    sequence runs one more decode step before it leaves; the time per output token is the same. vLLM's and
    SGLang's report each token with its iteration."""
    plain = ServingSpec(input_tokens=1000, output_tokens=10, concurrency=1, num_requests=2, engine=plain_engine)
    overlapped = ServingSpec(input_tokens=1000, output_tokens=10, concurrency=1, num_requests=2, engine="trtllm")
    one, late = (run_engine(spec, linear, kv_capacity_tokens=10**6, ranks=1) for spec in (plain, overlapped))
    first, second = one.requests[0], late.requests[0]
    assert first.first_token_s == pytest.approx(1.010)
    assert second.first_token_s == pytest.approx(1.010 + 0.0101)  # reported under the first decode iteration
    assert second.finish_s == pytest.approx(first.finish_s + 0.0101)  # the extra decode step
    assert (second.finish_s - second.first_token_s) == pytest.approx(first.finish_s - first.first_token_s)
    assert late.iterations == one.iterations + 2  # one extra step a request
    assert late.requests[1].arrival_s == pytest.approx(second.finish_s)


def test_serve_says_which_scheduler_it_played() -> None:
    trtllm = simulate_serving(scenario_from_dict(_mixtral(concurrency=8, engine="trtllm")))
    assert any("one extra decoding step" in note for note in trtllm.notes)
    vllm = simulate_serving(scenario_from_dict(_mixtral(concurrency=8, engine="vllm")))
    assert not any("reported one iteration after" in note for note in vllm.notes)


def test_long_prompts_are_prefilled_in_chunks_and_decodes_go_first() -> None:
    spec = ServingSpec(input_tokens=20000, output_tokens=2, concurrency=1, num_requests=1, token_budget=8192)
    run = run_engine(spec, linear, kv_capacity_tokens=10**6, ranks=1)
    # 8192 + 8192 + 3616 prompt tokens in three iterations, then one decode
    assert run.requests[0].first_token_s == pytest.approx(3 * 0.010 + 0.001 * 20000)
    assert run.iterations == 4
    crowded = ServingSpec(input_tokens=8192, output_tokens=50, concurrency=2, num_requests=2, token_budget=8192)
    both = run_engine(crowded, linear, kv_capacity_tokens=10**6, ranks=1).requests
    # the second prompt waits for the first's iteration, then shares iterations with its decode
    # (8,191 tokens beside the first's decode, then the last token beside its next decode)
    assert both[1].first_token_s == pytest.approx(3 * 0.010 + 0.001 * 8192 + 0.001 * 8191 + 0.001 + 2 * 0.0001)


def test_the_kv_cache_limits_the_running_batch() -> None:
    spec = ServingSpec(input_tokens=1000, output_tokens=100, concurrency=8, num_requests=8)
    roomy = run_engine(spec, linear, kv_capacity_tokens=10**6, ranks=1)
    tight = run_engine(spec, linear, kv_capacity_tokens=2 * 1100, ranks=1)
    assert roomy.peak_running == 8 and tight.peak_running == 2 and tight.kv_limited_iterations > 0
    # all eight prefill in one iteration and finish together; two at a time, in pairs: the time-weighted means
    assert roomy.mean_running == pytest.approx(8.0) and tight.mean_running == pytest.approx(2.0)
    assert tight.end_s > roomy.end_s


def _mixtral(**serving) -> dict:  # type: ignore[no-untyped-def]
    return {
        "model": {"preset": "mixtral-8x7b", "num_layers": 4},
        "cluster": {"num_nodes": 1, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "inference"},
        "simulation": {"network_mode": "fast"},
        "serving": {"input_tokens": {"min": 512, "max": 2048}, "output_tokens": 64, "num_requests": 160, **serving},
    }


def test_more_concurrency_buys_throughput_with_latency() -> None:
    light = simulate_serving(scenario_from_dict(_mixtral(concurrency=8)))
    heavy = simulate_serving(scenario_from_dict(_mixtral(concurrency=128)))
    assert heavy.output_tokens_per_s > 2 * light.output_tokens_per_s
    assert heavy.tpot_s[50] > light.tpot_s[50] and heavy.ttft_s[90] > light.ttft_s[90]
    assert light.ttft_s[50] <= light.ttft_s[90] <= light.ttft_s[99]
    assert heavy.dollars_per_million_output_tokens < light.dollars_per_million_output_tokens
    assert heavy.attention_ranks == 8 and heavy.output_tokens_per_s_per_gpu == heavy.output_tokens_per_s / 8


def test_poisson_arrivals_queue_when_the_rate_outgrows_the_engine() -> None:
    slow = simulate_serving(scenario_from_dict(_mixtral(arrival="poisson", request_rate=4.0)))
    fast = simulate_serving(scenario_from_dict(_mixtral(arrival="poisson", request_rate=40000.0)))
    assert fast.ttft_s[90] > 5 * slow.ttft_s[90]
    assert slow.requests_per_s == pytest.approx(4.0, rel=0.5)  # it keeps up with a light load


def test_what_serving_cannot_do_yet_is_an_error() -> None:
    with pytest.raises(MoesimError, match="serving.request_rate: poisson arrivals need a rate"):
        scenario_from_dict(_mixtral(arrival="poisson"))
    with pytest.raises(MoesimError, match="workload.mode"):
        simulate_serving(scenario_from_dict({**_mixtral(), "workload": {"mode": "training"}}))
    with pytest.raises(MoesimError, match="exceed mixtral-8x7b's context"):
        scenario_from_dict(_mixtral(input_tokens=30000, output_tokens=30000))
    long_context = {
        **_mixtral(input_tokens=1_000_000, output_tokens=10),
        "model": {"preset": "mixtral-8x7b", "max_seq_len": 2_000_000},
    }  # 32 layers: 128 KB a token
    with pytest.raises(MoesimError, match="needs more KV cache than an attention rank holds"):
        simulate_serving(scenario_from_dict(long_context))


def test_serve_prints_percentiles_and_cost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from moesim.cli import app

    path = tmp_path / "serve.json"
    path.write_text(json.dumps(_mixtral(concurrency=16)))
    runner = CliRunner()
    table = runner.invoke(app, ["serve", str(path)])
    assert table.exit_code == 0, table.output
    assert "time to first token" in table.output and "$ per million output tokens" in table.output
    assert "output tokens / s per GPU" in table.output and "input tokens / s per GPU" in table.output
    data = json.loads(runner.invoke(app, ["serve", str(path), "--json"]).output)
    assert data["ttft_s"]["50"] > 0 and data["output_tokens_per_s"] > 0
    wrong = runner.invoke(app, ["serve", str(path), "--set", "workload.mode=training"])
    assert wrong.exit_code == 2 and "workload.mode" in wrong.output


def test_the_curve_trades_latency_for_throughput(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moesim.serving import concurrency_curve

    curve = concurrency_curve(scenario_from_dict(_mixtral()), [8, 32, 128])
    throughput = [result.output_tokens_per_s_per_gpu for _, result in curve]
    latency = [result.tpot_s[50] for _, result in curve]
    assert [level for level, _ in curve] == [8, 32, 128]
    assert throughput == sorted(throughput) and latency == sorted(latency)
    import json

    from typer.testing import CliRunner

    from moesim.cli import app

    path = tmp_path / "curve.json"
    path.write_text(json.dumps(_mixtral()))
    bad = CliRunner().invoke(app, ["serve", str(path), "--concurrency", "a,b"])
    assert bad.exit_code == 2 and "--concurrency: 'a,b' is not a list of request counts" in bad.output
    good = CliRunner().invoke(app, ["serve", str(path), "--concurrency", "4,16"])
    assert good.exit_code == 0 and "throughput against latency" in good.output


def test_deepep_serves_prefill_with_its_normal_kernels_and_decode_with_its_low_latency_ones() -> None:
    from moesim.serving.iteration import IterationCost

    document = {
        **_mixtral(token_budget=256),
        "cluster": {"preset": "hgx-h800", "num_nodes": 2},
        "parallelism": {"ep_size": 16},
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
    }
    document["simulation"] = {"network_mode": "fast", "alltoall_algorithm": "deepep"}
    cost = IterationCost(scenario_from_dict(document))
    decode_only, with_prefill = cost.seconds(0, 0, 64, 2048), cost.seconds(1, 2048, 63, 2048)
    (decode_compute, _), (prefill_compute, _) = cost._passes[True], cost._passes[False]
    assert cost.two_modes and not np.array_equal(decode_compute, prefill_compute)  # two kernels, two costs
    assert decode_only != pytest.approx(with_prefill, rel=1e-3)


def test_speculative_decoding_gains_the_accepted_drafts() -> None:
    plain = ServingSpec(input_tokens=100, output_tokens=101, concurrency=1, num_requests=1)
    drafted = ServingSpec(
        input_tokens=100, output_tokens=101, concurrency=1, num_requests=1, speculative_tokens=1, acceptance_rate=0.5
    )
    assert drafted.tokens_per_step == 1.5
    one, two = (run_engine(spec, linear, 10**6, 1).requests[0] for spec in (plain, drafted))
    # 100 more tokens: 100 steps of 10.1 ms, or 67 steps (1.5 tokens each) of 10 + 0.2 + 1 ms
    assert one.finish_s - one.first_token_s == pytest.approx(100 * 0.0101)
    assert two.finish_s - two.first_token_s == pytest.approx(67 * 0.0112)
    with pytest.raises(MoesimError, match="serving.speculative_tokens: mixtral-8x7b has no multi-token"):
        scenario_from_dict(_mixtral(speculative_tokens=1))
    deepseek = {
        **_mixtral(speculative_tokens=1),
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
        "cluster": {"preset": "hgx-h800", "num_nodes": 2},
        "parallelism": {"ep_size": 16},
    }
    with_mtp = simulate_serving(scenario_from_dict(deepseek))
    without = simulate_serving(
        scenario_from_dict({**deepseek, "serving": {**deepseek["serving"], "speculative_tokens": 0}})
    )
    assert with_mtp.tpot_s[50] < without.tpot_s[50] and any("speculative" in note for note in with_mtp.notes)


def _deepseek_on_two_nodes(**serving: Any) -> dict:
    """A four-layer DeepSeek-V3 on two H800 nodes (EP 16), served with Poisson arrivals."""
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
        "cluster": {"preset": "hgx-h800", "num_nodes": 2},
        "parallelism": {"ep_size": 16},
        "workload": {"mode": "inference"},
        "simulation": {"network_mode": "fast"},
        "serving": {"arrival": "poisson", **serving},
    }


def test_disaggregated_prefill_spares_the_decode_pool_its_prompts() -> None:
    deepseek = _deepseek_on_two_nodes(input_tokens=4096, output_tokens=64, request_rate=200, num_requests=320)
    together = simulate_serving(scenario_from_dict(deepseek))
    apart = simulate_serving(
        scenario_from_dict({**deepseek, "serving": {**deepseek["serving"], "prefill_pool": {"num_nodes": 1}}})
    )
    assert apart.gpus == 24 and any("disaggregated" in note for note in apart.notes)
    assert apart.tpot_s[50] < together.tpot_s[50]  # decode iterations carry no prompt chunks
    # the first token waits for its KV cache to cross a 400 Gb/s NIC: 4,096 tokens of 4-layer MLA latents
    kv = 4 * (512 + 64) * 2 * 4096
    assert min(apart.ttft_samples_s) > kv / 50e9
    closed = scenario_from_dict({**deepseek, "serving": {"prefill_pool": {"num_nodes": 1}, "concurrency": 16}})
    assert closed.serving.arrival == "closed"  # a closed loop: the decode pool holds it (docs/serving.md)


def test_a_disaggregated_curve_builds_each_pools_iteration_times_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the iteration times is most of a serving run's time: a throughput-latency curve over four
    concurrencies builds the decode pool's and the prefill pool's once each, and serves as they would alone."""
    from moesim.serving import CURVE_GENERATIONS, concurrency_curve
    from moesim.serving.iteration import IterationCost

    scenario = scenario_from_dict(
        _deepseek_on_two_nodes(
            input_tokens=1024, output_tokens=16, request_rate=100, num_requests=64, prefill_pool={"num_nodes": 1}
        )
    )
    built: list[int] = []
    original = IterationCost.__post_init__

    def counting(self: IterationCost) -> None:
        built.append(self.scenario.cluster.num_nodes)
        original(self)

    monkeypatch.setattr(IterationCost, "__post_init__", counting)
    curve = concurrency_curve(scenario, [8, 16, 32, 64])
    assert sorted(built) == [1, 2]  # the prefill pool (one node) and the decode pool (the scenario's two)
    requests = CURVE_GENERATIONS * 16  # each point serves enough requests to hold its concurrency for a while
    closed = {"arrival": "closed", "concurrency": 16, "num_requests": requests}
    alone = simulate_serving(scenario.model_copy(update={"serving": scenario.serving.model_copy(update=closed)}))
    assert curve[1][1].tpot_s == alone.tpot_s and curve[1][1].ttft_s == alone.ttft_s
    # the prefill pool is fed what the decode pool serves at its concurrency, as a stream, not a queue of 16
    assert any(
        note.startswith("closed loop: the decode pool holds 16 requests; the") and "as a Poisson stream" in note
        for note in curve[1][1].notes
    )


def test_two_batch_overlap_pays_off_when_communication_dominates() -> None:
    def deepseek(nic_gbps: float, overlap: bool) -> dict:
        return {
            "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
            "cluster": {"preset": "hgx-h800", "num_nodes": 2, "nic_gbps": nic_gbps},
            "parallelism": {"ep_size": 16},
            "workload": {"mode": "inference"},
            "simulation": {"network_mode": "fast"},
            "serving": {
                "input_tokens": 1024,
                "output_tokens": 32,
                "concurrency": 512,
                "num_requests": 256,
                "two_batch_overlap": overlap,
            },
        }

    def throughput(nic: float, overlap: bool) -> float:
        return simulate_serving(scenario_from_dict(deepseek(nic, overlap))).output_tokens_per_s_per_gpu

    # a slower network: the all-to-alls outweigh the compute, which hides under the other half's (a gain bounded by
    # the compute there is to hide: 4.6% here, 5-6% before the kernel profiles' held-out refit)
    assert throughput(50, True) > 1.03 * throughput(50, False)
    # a fast one: two half batches read every expert's weights twice and gain little to hide
    assert throughput(400, True) < throughput(400, False)


def test_two_batch_overlap_hides_attention_under_the_other_halfs_all_to_alls() -> None:
    """DeepSeek's two micro-batches: one's attention runs while the other's combine is in flight. An iteration
    costs max(2 (c + a), 2 m) + min(c + a, m) / layers for each half's compute c, collectives m and attention a
    (its own kernels over half the tokens): longer contexts cost nothing while the all-to-alls dominate, and each
    added second of attention costs a second once compute with attention does."""
    from moesim.serving.iteration import IterationCost

    document = {
        "model": {"preset": "deepseek-v3", "num_layers": 4, "first_k_dense_layers": 3},
        "cluster": {"preset": "hgx-h800", "num_nodes": 2, "nic_gbps": 25},
        "parallelism": {"ep_size": 16},
        "workload": {"mode": "inference"},
        "simulation": {"network_mode": "fast"},
        "serving": {"token_budget": 4096, "two_batch_overlap": True},
    }
    cost = IterationCost(scenario_from_dict(document))
    tokens = 2048
    cost.seconds(0, 0, tokens, 64)  # builds the grid
    computes, collectives_by_stage = cost._pass_without_attention(tokens, cost._decode_base)
    compute, collectives = float(computes[0]), float(collectives_by_stage[0])  # one pipeline stage
    layers = len(cost.plan.layers)
    assert collectives > compute > 0  # a slow network: the all-to-alls dominate
    half_tokens = tokens // 2
    for context in (64, 1024, 8192, 65536):
        half = compute + cost._attention(half_tokens, context, True)
        expected = max(2 * half, 2 * collectives) + min(half, collectives) / layers
        assert cost.seconds(0, 0, tokens, context) == pytest.approx(expected, rel=1e-9)
    short, longer = (cost.seconds(0, 0, tokens, context) for context in (64, 1024))
    gained = cost._attention(half_tokens, 1024, True) - cost._attention(half_tokens, 64, True)
    assert gained > 0
    assert longer - short < 0.5 * gained
    long_attention = cost._attention(half_tokens, 65536, True)
    assert compute + long_attention > collectives  # compute with attention dominates: attention is paid
    assert cost.seconds(0, 0, tokens, 65536) == pytest.approx(
        2 * (compute + long_attention) + collectives / layers, rel=1e-9
    )
    # two halves read the attention's weights twice: a split batch's attention costs more than the whole's
    assert 2 * cost._attention(half_tokens, 64, True) > cost._attention(tokens, 64, True)


def test_a_cached_prefix_is_held_and_attended_to_but_not_computed() -> None:
    seen: list[tuple[int, float]] = []

    def recording(
        prefill: int, prefill_context: float, decode: int, decode_context: float, drafts: int = 0, sampled: int = 0
    ) -> float:
        seen.append((prefill, prefill_context))
        return linear(prefill, prefill_context, decode, decode_context, drafts)

    spec = ServingSpec(input_tokens=1000, output_tokens=2, concurrency=1, num_requests=1, prefix_cache_hit_rate=0.6)
    run = run_engine(spec, recording, kv_capacity_tokens=1002, ranks=1)  # the whole prompt's KV must fit
    # 400 tokens computed, attending to the 600 cached before them and half their own
    assert seen[0] == (400, pytest.approx(600 + 400 / 2))
    assert run.requests[0].first_token_s == pytest.approx(0.010 + 0.001 * 400)
    with pytest.raises(ValueError, match="prefix_cache_hit_rate"):
        ServingSpec(prefix_cache_hit_rate=1.0)


def test_mla_decodes_in_its_absorbed_form() -> None:
    """DeepSeek-V3's decode scores the 512 + 64 latent per head and sums the 512 latent: (576 + 512) / (192 + 128)
    = 3.4 times the expanded form's FLOPs, which prefill uses."""
    from moesim.models import accounting, model_preset

    model = model_preset("deepseek-v3")
    expanded = accounting.attention_score_flops_per_token(model, 4096)
    absorbed = accounting.attention_score_flops_per_token(model, 4096, absorbed=True)
    assert absorbed / expanded == pytest.approx((512 + 64 + 512) / (128 + 64 + 128))
    assert absorbed == pytest.approx(2 * 128 * 1088 * 4096 * 61 * 0.5)


def test_fused_kernels_move_each_permutation_once_through_memory() -> None:
    from moesim.sim.device import cost_model_for
    from moesim.sim.step import simulate

    document = {
        "model": "mixtral-8x7b",
        "cluster": {"num_nodes": 1, "gpus_per_node": 8, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8},
        "workload": {"mode": "inference", "micro_batch_size": 2, "seq_len": 1024, "decode_tokens": 0},
        "simulation": {"network_mode": "fast"},
    }
    eager = simulate(scenario_from_dict(document))
    fused_scenario = scenario_from_dict(document, ["simulation.moe_kernels=fused"])
    fused = simulate(fused_scenario)
    tokens, layers = 2 * 1024, 32
    one_pass = cost_model_for(fused_scenario).memory_seconds(2 * tokens * 2 * 4096 * 2)  # read and write, top-2
    assert fused.phase_seconds["prefill/permute"] == pytest.approx(layers * one_pass)
    assert fused.phase_seconds["prefill/unpermute"] == pytest.approx(layers * one_pass)
    assert eager.phase_seconds["prefill/unpermute"] > 2 * fused.phase_seconds["prefill/unpermute"]
    assert "fused kernels" in fused.sources["prefill/permute"]


def test_the_published_operating_point_times_its_iterations_and_the_wait_for_them() -> None:
    """Prompts prefilled whole in the iteration after they arrive: TTFT is the mean residual of the iterations in
    flight, E[t^2] / (2 E[t]), plus the iteration that prefills the prompt, whose length is weighted by the prompts
    it holds. Closed forms for a fixed iteration (1.5 t) and for t = a + b x prompts, prompts ~ Poisson(m)."""
    from moesim.validation.published_serving import iterations_at_operating_point

    class Fixed:
        def seconds(self, prefill: int, context: float, decode: int, decode_context: float) -> float:
            return 0.05

    step, first_token = iterations_at_operating_point(Fixed(), 40.0, 100, [500], 100, 0.1, samples=200)
    assert step == pytest.approx(0.05) and first_token == pytest.approx(0.075)

    class Linear:
        def seconds(self, prefill: int, context: float, decode: int, decode_context: float) -> float:
            return 0.01 + 2e-5 * prefill  # 10 ms, and 10 ms a 500-token prompt

    a, b, m = 0.01, 0.01, 40.0 * 0.1  # prompts per iteration: Poisson with mean 4
    step, first_token = iterations_at_operating_point(Linear(), 40.0, 100, [500], 100, 0.1, samples=40000)
    mean = a + b * m
    second = mean**2 + b * b * m
    assert step == pytest.approx(mean, rel=0.01)
    assert first_token == pytest.approx(second / (2 * mean) + a + b * (1 + m), rel=0.01)


def test_a_pipeline_keeps_a_batch_in_flight_per_stage() -> None:
    """Pipeline parallelism: each attention rank's `pp_size` stages run `pp_size` engines, one batch in flight per
    stage; an engine's iteration passes every stage and the activations' hops between them, and with the other
    engines busy waits for the slowest stage to serve them: max(sum of stages + hops, pp x slowest stage). Each
    GPU holds its stage's layers' KV cache; the pipeline's is shared by its engines."""
    from moesim.serving.iteration import IterationCost

    piped = scenario_from_dict({**_mixtral(concurrency=64), "parallelism": {"ep_size": 4, "pp_size": 2}})
    cost = IterationCost(piped)
    assert cost.stages == 2
    tokens, context = 64, 1024
    cost.seconds(0, 0, tokens, context)  # builds the grid
    computes, _ = cost._pass_without_attention(tokens, cost._decode_base)
    stages = [float(computes[stage]) + cost._attention(tokens, context, True, stage) for stage in range(2)]
    # four GPUs a stage, under a node: the hop is NVLink's latency plus 64 tokens x 4,096 bf16 values at 450 GB/s
    hop = 2e-6 + tokens * 4096 * 2 / 450e9
    assert cost.hop_seconds(tokens) == pytest.approx(hop)
    expected = max(sum(stages) + hop, 2 * max(stages))
    assert cost.seconds(0, 0, tokens, context) == pytest.approx(expected, rel=1e-9)
    assert cost._attention(tokens, context, True) == pytest.approx(
        sum(cost._attention(tokens, context, True, s) for s in (0, 1))
    )
    # a stage's GPU holds two of the four layers: twice the tokens a GPU holding all four would, shared by 2 engines
    from moesim.models import accounting
    from moesim.sim.memory import memory_per_gpu

    memory = memory_per_gpu(cost._base, cost.plan)
    free = memory.capacity_bytes - memory.weights_bytes - memory.alltoall_buffer_bytes - memory.activations_bytes
    full = accounting.kv_cache_bytes_per_token(piped.model, piped.workload.precision)
    assert cost.kv_capacity_tokens() == int(free / (full / 2) / 2)
    served = simulate_serving(piped)
    assert served.attention_ranks == 8  # four attention ranks of two stages, two engines each
    assert any(note.startswith("pipeline: an iteration takes max(") for note in served.notes)
    assert served.output_tokens_per_s > 0 and served.tpot_s[50] > 2 * cost.hop_seconds(1)


def test_a_prompt_token_attends_to_the_context_the_engine_passes_once_halved() -> None:
    """The engine passes the keys a prompt token attends to on average (half a whole prompt, causal): a prompt of
    4,096 tokens costs each token 2 x heads x (qk + v) x 2,048 score FLOPs a layer, as a decode token reading 2,048
    cached tokens scores (before its KV-cache read bounds it). Halving that context again, as the phase builder's
    training path does for a full sequence, priced serving prefill's attention at half its FLOPs."""
    from moesim.serving.iteration import IterationCost

    scenario = scenario_from_dict(
        {**_mixtral(concurrency=8), "parallelism": {"ep_size": 1}, "cluster": {"num_nodes": 1, "gpus_per_node": 1}}
    )
    cost = IterationCost(scenario)
    model, tokens, layers = scenario.model, 4096, 4
    flops = 2 * model.num_attention_heads * 2 * model.attention_head_dim * 2048 * tokens * layers
    prompt = cost._attention(tokens, 2048, False)
    builder_parts = cost.cost.attention_seconds(flops)
    assert prompt > builder_parts  # the scores plus the projections and norms
    scores_only = prompt - cost._attention(tokens, 64, False)  # the same GEMMs and norms at a short context
    expected = builder_parts - cost.cost.attention_seconds(flops * 64 / 2048)
    assert scores_only == pytest.approx(expected, rel=1e-6)


def test_the_output_head_runs_on_the_sampled_rows_only() -> None:
    """An engine computes logits for each decode token and each prompt whose last chunk ran, not for every prompt
    token: a 4,096-token prompt iteration is cheaper than the pass over all its rows by exactly the head's GEMM and
    logits pass over the 4,095 rows it skips."""
    from moesim.serving.iteration import IterationCost

    scenario = scenario_from_dict(
        {**_mixtral(concurrency=8), "parallelism": {"ep_size": 1}, "cluster": {"num_nodes": 1, "gpus_per_node": 1}}
    )
    cost = IterationCost(scenario)
    every_row = cost.seconds(4096, 2048, 0, 0, sampled=4096)
    one_row = cost.seconds(4096, 2048, 0, 0, sampled=1)
    assert cost.seconds(4096, 2048, 0, 0) == one_row  # the default: one prompt finishing
    vocab, hidden = scenario.model.vocab_size, scenario.model.hidden_size
    head = float(cost.cost.gemm_seconds(4096, hidden, vocab)) + cost.cost.memory_seconds(8 * 4096 * vocab)
    assert every_row - one_row == pytest.approx(head - cost.head_seconds(1), rel=1e-9)
    assert cost.seconds(0, 0, 64, 1024, sampled=64) == cost.seconds(0, 0, 64, 1024)  # decode: every row samples


def test_a_disaggregated_closed_loop_feeds_its_prefill_pool_what_its_decode_pool_serves() -> None:
    """Under a closed loop of C requests nearly all of them are decoding: the prefill pool sees the decode pool's
    rate as a stream, and its first tokens wait for that stream's prompts, not behind C prompts at once. The
    requests in prefill at a time (Little's law: the rate times the time to first token) are few beside C."""
    from moesim.serving import concurrency_curve

    scenario = scenario_from_dict(
        _deepseek_on_two_nodes(
            input_tokens=1024, output_tokens=128, request_rate=100, num_requests=64, prefill_pool={"num_nodes": 1}
        )
    )
    ((level, served),) = concurrency_curve(scenario, [64])
    assert any("reach the prefill pool as a Poisson stream" in note for note in served.notes)
    in_prefill = served.requests_per_s * served.ttft_s[50]
    assert in_prefill < 0.1 * level
    # eight times the concurrency: the decode pool would serve more than the prefill pool can prefill, and the
    # deployment serves what the prefill pool can
    from moesim.serving import prefill_pool_scenario
    from moesim.serving.capacity import pool_capacity
    from moesim.serving.iteration import IterationCost

    ((_, limited),) = concurrency_curve(scenario, [512])
    assert any("the prefill pool cannot keep up" in note for note in limited.notes)
    prefill = prefill_pool_scenario(scenario)
    cost = IterationCost(prefill)
    capacity = pool_capacity(scenario.serving, cost.seconds, cost.kv_capacity_tokens(), "prefill")
    assert limited.requests_per_s == pytest.approx(capacity.requests_per_s * 8)  # its 8 ranks
