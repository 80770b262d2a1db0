"""A plan as the stack's own arguments: Megatron-Core's for training, TensorRT-LLM's, SGLang's and vLLM's for serving.

Flag names are checked against the list transcribed from Megatron-LM d98e8a6 (arguments.py's explicit flags and the
config dataclass fields it turns into flags); values against the scenario they came from, and the commands' shapes
against the layout (GPUs, ranks, replicas) they must reproduce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.models import accounting
from moesim.planning.deploy_serving import engine_deployment
from moesim.planning.deploy_training import megatron_deployment
from moesim.scenario import load_scenario
from moesim.scenario.serving import most_tokens
from moesim.sim.inference import InferencePass

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

MEGATRON_FLAGS = {
    # explicit add_argument calls in megatron/training/arguments.py
    "--data-parallel-sharding-strategy",
    "--moe-router-load-balancing-type",
    "--num-virtual-stages-per-pipeline-rank",
    "--overlap-grad-reduce",
    "--overlap-param-gather",
    "--pipeline-model-parallel-layout",
    "--seq-length",
    "--use-distributed-optimizer",
    # dataclass fields made flags (ModelParallelConfig, TransformerConfig, TrainingConfig, DistributedInitConfig)
    "--bf16",
    "--context-parallel-size",
    "--expert-model-parallel-size",
    "--expert-tensor-parallel-size",
    "--fp8-format",  # TransformerConfig.fp8's argparse name
    "--fp8-recipe",
    "--global-batch-size",
    "--micro-batch-size",
    "--moe-deepep-num-sms",
    "--moe-expert-capacity-factor",
    "--moe-flex-dispatcher-backend",
    "--moe-grouped-gemm",
    "--moe-pad-expert-input-to-capacity",
    "--moe-permute-fusion",
    "--moe-router-enable-expert-bias",
    "--moe-router-force-load-balancing",
    "--moe-router-fusion",
    "--moe-router-group-topk",
    "--moe-router-num-groups",
    "--moe-router-score-function",
    "--moe-router-topk",
    "--moe-shared-expert-overlap",
    "--moe-token-dispatcher-type",
    "--moe-token-drop-policy",
    "--mtp-num-layers",
    "--overlap-moe-expert-parallel-comm",
    "--pipeline-model-parallel-size",
    "--recompute-granularity",
    "--recompute-method",
    "--recompute-modules",
    "--recompute-num-layers",
    "--sequence-parallel",
    "--tensor-model-parallel-size",
    "--use-megatron-fsdp",
}


def _flags(launch) -> dict[str, str | None]:
    return {flag.name: flag.value for flag in launch.flags}


def _unrolled_layout(layout: str) -> list[str]:
    """Megatron's layout string unrolled as its parser does (pipeline_parallel_layer_layout.py): x*n repeats."""
    text = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), layout.replace(",", ""))
    text = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    return text.split("|")


def test_deepseek_v3_pretraining_as_megatron_core_flags() -> None:
    scenario = load_scenario(SCENARIOS / "deepseek-v3-pretraining.yaml")
    deployment = megatron_deployment(scenario)
    (launch,) = deployment.launches
    flags = _flags(launch)
    assert set(flags) <= MEGATRON_FLAGS
    # the report's layout (3.1, 3.2): TP 1, PP 16, EP 64 over 2,048 GPUs, ZeRO-1
    assert flags["--tensor-model-parallel-size"] == "1"
    assert flags["--pipeline-model-parallel-size"] == "16"
    assert flags["--expert-model-parallel-size"] == "64"
    assert "--use-distributed-optimizer" in flags
    assert launch.nodes_each * launch.gpus_each == 2048 and "--nnodes 256" in launch.command()
    # node-limited routing: 8 groups, 4 a token; sigmoid scores with the bias correction; one MTP module; FP8 blocks
    assert (flags["--moe-router-num-groups"], flags["--moe-router-group-topk"]) == ("8", "4")
    assert flags["--moe-router-score-function"] == "sigmoid" and "--moe-router-enable-expert-bias" in flags
    assert flags["--mtp-num-layers"] == "1"
    assert (flags["--fp8-format"], flags["--fp8-recipe"]) == ("e4m3", "blockwise")
    assert (flags["--moe-flex-dispatcher-backend"], flags["--moe-deepep-num-sms"]) == ("deepep", "20")
    assert "--recompute-modules layernorm mla_up_proj moe_act" in launch.command()  # a list flag, words apart
    assert any("DualPipe" in note for note in deployment.notes)


def test_uneven_pipeline_stages_become_megatrons_layout_with_every_layer_once() -> None:
    layers = [4] * 15 + [2]
    scenario = load_scenario(
        SCENARIOS / "deepseek-v3-pretraining.yaml", [f"parallelism.pipeline_layers={json.dumps(layers)}"]
    )
    layout = _flags(megatron_deployment(scenario).launches[0])["--pipeline-model-parallel-layout"]
    stages = _unrolled_layout(layout)
    assert len(stages) == 16
    assert "".join(stages).count("t") == 61 and "".join(stages).count("m") == 1  # DeepSeek-V3: 61 layers, 1 MTP
    assert stages[0].startswith("E") and stages[-1].endswith("mL")
    assert [stage.count("t") + stage.count("m") for stage in stages] == layers


def test_megatron_flags_follow_recompute_sharding_capacity_and_overlap_settings() -> None:
    scenario = load_scenario(
        SCENARIOS / "mixtral-8x7b-training-mcore.yaml",
        [
            "workload.activation_recompute=full",
            "parallelism.zero_stage=3",
            "routing.capacity_factor=1.25",
            "routing.pad_to_capacity=true",
            "simulation.alltoall_overlap=1f1b",
        ],
    )
    deployment = megatron_deployment(scenario)
    flags = _flags(deployment.launches[0])
    assert set(flags) <= MEGATRON_FLAGS
    assert (flags["--recompute-granularity"], flags["--recompute-method"], flags["--recompute-num-layers"]) == (
        "full",
        "uniform",
        "1",
    )
    assert (flags["--use-megatron-fsdp"], flags["--data-parallel-sharding-strategy"]) == (None, "optim_grads_params")
    assert flags["--moe-expert-capacity-factor"] == "1.25" and "--moe-pad-expert-input-to-capacity" in flags
    assert "--overlap-moe-expert-parallel-comm" in flags
    par = scenario.parallelism
    if par.pp_size > 1 and par.virtual_pipeline_size == 1:  # Megatron requires VPP for it: said
        assert any("virtual pipeline" in note for note in deployment.notes)


def test_a_routing_rule_megatron_does_not_ship_is_said_not_dressed_up() -> None:
    scenario = load_scenario(SCENARIOS / "mixtral-8x7b-training-mcore.yaml", ["routing.strategy=expert_choice"])
    deployment = megatron_deployment(scenario)
    assert any("expert_choice has no Megatron-Core router" in note for note in deployment.notes)
    assert "--moe-router-load-balancing-type" not in _flags(deployment.launches[0])


def test_the_training_command_reproduces_the_layout() -> None:
    """World = TP x PP x CP x DP from the flags and torchrun's placement; the batch divides into micro-batches."""
    for name in ("deepseek-v3-pretraining", "mixtral-8x22b-training-mcore", "qwen3-235b-a22b-training-mcore"):
        scenario = load_scenario(SCENARIOS / f"{name}.yaml")
        (launch,) = megatron_deployment(scenario).launches
        flags = _flags(launch)
        world = launch.nodes_each * launch.gpus_each
        model_parallel = int(flags["--tensor-model-parallel-size"]) * int(flags["--pipeline-model-parallel-size"])
        model_parallel *= int(flags.get("--context-parallel-size") or 1)
        assert world == scenario.cluster.world_size and world % model_parallel == 0
        data_parallel = world // model_parallel
        assert int(flags["--global-batch-size"]) % (int(flags["--micro-batch-size"]) * data_parallel) == 0
        experts = int(flags["--expert-model-parallel-size"]) * int(flags["--expert-tensor-parallel-size"])
        assert (
            data_parallel * int(flags.get("--context-parallel-size") or 1) * int(flags["--tensor-model-parallel-size"])
        ) % experts == 0


def test_deepseek_serving_as_each_engines_servers() -> None:
    """DeepSeek's units (open-infra-index day 6): decode EP144 over 18 nodes, prefill three 4-node EP32 units."""
    scenario = load_scenario(SCENARIOS / "deepseek-v3-serving-h800.yaml")
    spec = scenario.serving
    sglang = engine_deployment(scenario, "sglang")
    prefill, decode = sglang.launches
    assert (prefill.copies, prefill.nodes_each, decode.copies, decode.nodes_each) == (3, 4, 1, 18)
    decode_flags = _flags(decode)
    assert (decode_flags["--tp-size"], decode_flags["--ep-size"], decode_flags["--dp-size"]) == ("144", "144", "144")
    # SGLang divides these among its attention ranks (scheduler.py, server_args.py): given for the whole server
    assert decode_flags["--max-running-requests"] == str(spec.max_running * 144)
    assert decode_flags["--chunked-prefill-size"] == str(spec.token_budget * 144)
    assert decode_flags["--deepep-mode"] == "low_latency" and _flags(prefill)["--deepep-mode"] == "normal"
    assert decode_flags["--disaggregation-mode"] == "decode"
    assert decode_flags["--speculative-num-draft-tokens"] == "2"  # one MTP draft
    vllm_decode = _flags(engine_deployment(scenario, "vllm").launches[1])
    assert (vllm_decode["--data-parallel-size"], vllm_decode["--tensor-parallel-size"]) == ("144", "1")
    assert vllm_decode["--max-num-seqs"] == str(spec.max_running)  # an engine core's own
    trtllm_decode = engine_deployment(scenario, "trtllm").launches[1]
    assert (_flags(trtllm_decode)["--tp_size"], _flags(trtllm_decode)["--ep_size"]) == ("144", "144")
    assert trtllm_decode.config_file["enable_attention_dp"] is True
    assert trtllm_decode.config_file["speculative_config"]["num_nextn_predict_layers"] == 1


@pytest.mark.parametrize("engine", ["sglang", "vllm", "trtllm"])
@pytest.mark.parametrize(
    "layout",
    [
        ["parallelism.tp_size=1", "parallelism.ep_size=8"],
        ["parallelism.tp_size=8", "parallelism.ep_size=1", "parallelism.expert_tp_size=8"],
        ["parallelism.tp_size=2", "parallelism.ep_size=4", "cluster.num_nodes=2"],
    ],
)
def test_servers_times_their_gpus_are_the_pool(engine: str, layout: list[str]) -> None:
    scenario = load_scenario(SCENARIOS / "mixtral-8x7b-serving.yaml", layout)
    (launch,) = engine_deployment(scenario, engine).launches
    flags = _flags(launch)
    server = {"sglang": "--tp-size", "trtllm": "--tp_size"}
    if engine == "vllm":
        gpus = int(flags["--tensor-parallel-size"]) * int(flags.get("--data-parallel-size") or 1)
    else:
        gpus = int(flags[server[engine]])
    assert launch.copies * gpus == scenario.cluster.world_size
    tensor_parallel_form = scenario.parallelism.ep_size == 1
    expert_flag = {"sglang": "--ep-size", "trtllm": "--ep_size", "vllm": "--enable-expert-parallel"}[engine]
    assert (expert_flag in flags) != tensor_parallel_form  # experts split by TP: no expert parallelism flag


def test_the_kv_cache_fraction_holds_the_plans_largest_batch() -> None:
    """TensorRT-LLM's fraction of the memory left after weights and buffers is the plan's largest batch's KV cache
    (max_running sequences of prompt + output tokens, a GQA token's K and V over every layer) over that memory."""
    scenario = load_scenario(SCENARIOS / "mixtral-8x7b-serving.yaml", ["serving.max_running=64"])
    model, spec = scenario.model, scenario.serving
    per_token = 2 * model.num_key_value_heads * (model.hidden_size // model.num_attention_heads) * model.num_layers * 2
    assert per_token == accounting.kv_cache_bytes_per_token(model, scenario.workload.precision) == 131072
    need = spec.max_running * (most_tokens(spec.input_tokens) + most_tokens(spec.output_tokens)) * per_token
    memory = InferencePass(scenario).memory()
    free = memory.capacity_bytes - memory.weights_bytes - memory.alltoall_buffer_bytes - memory.activations_bytes
    assert need < free
    fraction = float(_flags(engine_deployment(scenario, "trtllm").launches[0])["--kv_cache_free_gpu_memory_fraction"])
    assert need / free <= fraction < need / free + 0.01
    vllm = float(_flags(engine_deployment(scenario, "vllm").launches[0])["--gpu-memory-utilization"])
    assert (free - need) / memory.capacity_bytes == pytest.approx(1 - vllm, abs=0.01)


def test_plan_serve_prints_the_engines_command_and_json_carries_all_three(tmp_path: Path) -> None:
    runner = CliRunner()
    path = SCENARIOS / "mixtral-8x7b-serving.yaml"
    common = ["plan", str(path), "--serve", "--ttft", "1", "--tpot", "0.05", "--max-gpus", "8", "--request-rate", "2"]
    text = runner.invoke(app, [*common, "--deploy", "vllm"])
    assert text.exit_code == 0, text.output
    assert "to deploy on vLLM" in text.output and "vllm serve $MODEL" in text.output
    as_json = runner.invoke(app, [*common, "--json"])
    assert as_json.exit_code == 0
    deploy = json.loads(as_json.stdout)["deploy"]
    assert set(deploy) == {"sglang", "vllm", "trtllm"}
    assert deploy["sglang"]["launches"][0]["command"].startswith("python -m sglang.launch_server")
    bad = runner.invoke(app, [*common, "--deploy", "ollama"])
    assert bad.exit_code == 2 and "--deploy" in bad.output and "Traceback" not in bad.output
    training = runner.invoke(app, ["plan", str(path), "--target-tokens-per-s", "1000", "--deploy", "vllm"])
    assert training.exit_code == 2 and "--deploy" in training.output


def test_a_training_plan_ends_with_megatron_cores_command() -> None:
    arguments = [
        "plan",
        str(SCENARIOS / "olmoe-1b-7b-training.yaml"),
        "--target-tokens-per-s",
        "2e5",
        "--max-gpus",
        "16",
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("to deploy on Megatron-Core (Megatron-LM pretrain_gpt.py):")
    assert any("pretrain_gpt.py" in line for line in lines[start:])
    assert any("--expert-model-parallel-size" in line for line in lines[start:])
    assert max(len(line) for line in lines[start:]) <= 100  # the console's width when piped
    assert "the cheapest plan of each other GPU searched" not in result.stdout  # one GPU searched: no empty table
