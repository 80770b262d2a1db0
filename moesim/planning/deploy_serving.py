"""A serving plan as TensorRT-LLM's, SGLang's or vLLM's launch commands.

Each pool of the planned deployment (one pool, or a disaggregated prefill pool and decode pool) becomes copies of
one engine server: the GPUs that share one copy of the experts (the EP group; for the TP form, one TP group and
its pipeline stages) run one server, and the pool's GPUs hold as many copies as fit, behind the engine's router.
Per-engine rules, each from the engine's own code or documentation:

- SGLang (`python/sglang/srt/server_args.py`, `managers/scheduler.py`): `--tp-size` is the server's GPUs; with
  `--enable-dp-attention` its `--dp-size` attention ranks each run `--max-running-requests / dp-size` sequences
  and `--chunked-prefill-size / dp-size` tokens an iteration, so both are given for the whole server;
  `--mem-fraction-static` is the memory share of weights and KV cache.
- vLLM (`vllm/config/parallel.py`, `vllm/engine/arg_utils.py`): `--data-parallel-size` x `--tensor-parallel-size`
  GPUs, `--enable-expert-parallel` puts the experts over all of them; each data-parallel rank is an engine with
  its own `--max-num-seqs` and `--max-num-batched-tokens`; `--gpu-memory-utilization` is the share of the GPU the
  engine may use in all.
- TensorRT-LLM (`trtllm-serve` options; LLM API `enable_attention_dp`, `speculative_config`): `--tp_size` is the
  server's GPUs, `--ep_size` its expert parallelism, attention data-parallel (TP 1) when `enable_attention_dp`;
  `--max_batch_size` and `--max_num_tokens` are an attention rank's; `--kv_cache_free_gpu_memory_fraction` the
  share of the memory left after weights and buffers.

moesim's figures for the plan assumed what its `serving` section says (batch limits per attention rank, the KV cache
all the memory left after weights, buffers and one pass's activations); the memory fractions given are those that
hold the plan's largest batch, and a note says where that is more than the engine's default leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from moesim.models import accounting
from moesim.planning.deploy import Deployment, Flag, Launch
from moesim.scenario.serving import most_tokens
from moesim.serving.pools import pool_scenarios
from moesim.sim.inference import InferencePass

ENGINE_NAMES = {"sglang": "SGLang", "vllm": "vLLM", "trtllm": "TensorRT-LLM"}
SOURCES = {
    "sglang": "SGLang python/sglang/srt/server_args.py and managers/scheduler.py",
    "vllm": "vLLM vllm/config/parallel.py and vllm/engine/arg_utils.py",
    "trtllm": "TensorRT-LLM trtllm-serve options and LLM API arguments (llmapi/llm_args.py)",
}
DEFAULT_FRACTION = {"vllm": 0.9, "trtllm": 0.9}
"""The engines' default memory fractions: vLLM's --gpu-memory-utilization and trtllm-serve's
--kv_cache_free_gpu_memory_fraction (SGLang's --mem-fraction-static is chosen by GPU memory)."""


def _shape(scenario: Any) -> tuple[str, int, int]:
    """(form, GPUs of one server, attention ranks in it): DEP is attention TP x data-parallel ranks over the EP
    group; TP is replicas of one TP group (and its pipeline stages) with every expert split over it."""
    par = scenario.parallelism
    if par.ep_size == 1 and par.expert_tp_size == par.tp_size and par.tp_size > 1:
        return "TP", par.tp_size * par.pp_size, par.pp_size
    gpus = max(par.ep_size, par.tp_size)
    return "DEP", gpus, gpus // par.tp_size


def _memory_share(scenario: Any, phase: str) -> tuple[float, float, float, float, bool]:
    """(capacity, weights, other fixed bytes, KV bytes per GPU for the plan's largest batch, whether the KV cache
    binds it): the memory model's figures at the pool's settings."""
    memory = InferencePass(scenario).memory()
    fixed = memory.alltoall_buffer_bytes + memory.activations_bytes
    free = max(0.0, memory.kv_room_bytes)
    spec, par = scenario.serving, scenario.parallelism
    tokens = most_tokens(spec.input_tokens) + (most_tokens(spec.output_tokens) if phase != "prefill" else 0)
    per_token = accounting.kv_cache_bytes_per_token(scenario.model, scenario.workload.precision)
    per_token *= accounting.kv_share_per_tp_rank(scenario.model, par.tp_size)
    need = spec.max_running * tokens * per_token
    return memory.capacity_bytes, memory.weights_bytes, fixed, min(need, free), need >= free


def _round_up(share: float) -> str:
    return f"{min(1.0, max(0.01, math.ceil(share * 100 - 1e-9) / 100)):.2f}"


@dataclass(frozen=True)
class _PoolShape:
    """What every engine's flags for one pool read: the pool's scenario and phase, its servers' shape and the
    memory shares of the plan's largest batch."""

    scenario: Any
    phase: str
    role: str
    form: str
    gpus: int
    ranks: int
    nodes: int
    capacity: float
    weights: float
    fixed: float
    kv: float
    kv_binds: bool

    @property
    def deepep(self) -> bool:
        par, sim = self.scenario.parallelism, self.scenario.simulation
        return sim.alltoall_algorithm in ("deepep", "deepep_low_latency") and par.ep_size > 1


def _shape_of(scenario: Any, phase: str, role: str) -> _PoolShape:
    form, gpus, ranks = _shape(scenario)
    nodes = max(1, math.ceil(gpus / scenario.cluster.gpus_per_node))
    return _PoolShape(scenario, phase, role, form, gpus, ranks, nodes, *_memory_share(scenario, phase))


Built = tuple[str, list[Flag], Optional[dict[str, Any]], list[str]]
"""An engine's program, flags, config file (or None) and notes for one pool."""


def _sglang(pool: _PoolShape) -> Built:
    par, spec, sim = pool.scenario.parallelism, pool.scenario.serving, pool.scenario.simulation
    ranks, mtp = pool.ranks, spec.speculative_tokens
    flags = [Flag("--tp-size", str(pool.gpus), "the planned layout: the server's GPUs")]
    if pool.form == "DEP":
        flags.append(Flag("--ep-size", str(par.ep_size), "parallelism.ep_size"))
        if ranks > 1:
            flags += [
                Flag("--dp-size", str(ranks), "attention ranks: ep_size / tp_size"),
                Flag("--enable-dp-attention", None, "parallelism.tp_size < ep_size (data-parallel attention)"),
            ]
    if par.pp_size > 1:
        flags.append(Flag("--pp-size", str(par.pp_size), "parallelism.pp_size"))
    flags += [
        Flag("--max-running-requests", str(spec.max_running * ranks), "serving.max_running x attention ranks"),
        Flag("--chunked-prefill-size", str(spec.token_budget * ranks), "serving.token_budget x attention ranks"),
        Flag("--mem-fraction-static", _round_up((pool.weights + pool.kv) / pool.capacity), "the plan's KV cache"),
    ]
    if pool.deepep:
        mode = {"prefill": "normal", "decode": "low_latency"}.get(pool.phase, "auto")
        flags += [
            Flag("--moe-a2a-backend", "deepep", "simulation.alltoall_algorithm = deepep"),
            Flag("--deepep-mode", mode, "normal kernels while prefilling, low-latency for decode-only steps"),
        ]
    if spec.two_batch_overlap:
        flags.append(Flag("--enable-two-batch-overlap", None, "serving.two_batch_overlap"))
    if sim.redundant_experts:
        flags.append(Flag("--ep-num-redundant-experts", str(sim.redundant_experts), "simulation.redundant_experts"))
    if mtp:
        flags += [
            Flag("--speculative-algorithm", "EAGLE", "serving.speculative_tokens (the model's MTP module)"),
            Flag("--speculative-num-steps", str(mtp), "serving.speculative_tokens"),
            Flag("--speculative-eagle-topk", "1", "one draft chain"),
            Flag("--speculative-num-draft-tokens", str(mtp + 1), "serving.speculative_tokens + 1"),
        ]
    if pool.phase in ("prefill", "decode"):
        flags.append(Flag("--disaggregation-mode", pool.phase, "serving.prefill_pool"))
    if pool.nodes > 1:
        flags += [
            Flag("--nnodes", str(pool.nodes), "the server's nodes"),
            Flag("--node-rank", "$NODE_RANK", "each node of the server"),
            Flag("--dist-init-addr", "$HEAD_NODE:5000", "the server's first node"),
        ]
    return "python -m sglang.launch_server --model-path $MODEL", flags, None, []


def _vllm(pool: _PoolShape) -> Built:
    scenario = pool.scenario
    par, spec, sim = scenario.parallelism, scenario.serving, scenario.simulation
    flags = [Flag("--tensor-parallel-size", str(par.tp_size), "parallelism.tp_size")]
    notes = []
    if pool.form == "DEP":
        if pool.ranks > 1:
            flags.append(Flag("--data-parallel-size", str(pool.ranks), "attention ranks: ep_size / tp_size"))
        if pool.gpus > 1:
            flags.append(Flag("--enable-expert-parallel", None, "parallelism.ep_size (EP = DP x TP in vLLM)"))
        if pool.nodes > 1:
            local = max(1, scenario.cluster.gpus_per_node // par.tp_size)
            flags.append(Flag("--data-parallel-size-local", str(local), "attention ranks a node"))
            notes.append(
                "vLLM: run the command on each of a server's nodes; on all but the first add --headless "
                "--data-parallel-start-rank <node x ranks a node> --data-parallel-address <first node>"
            )
    if par.pp_size > 1:
        flags.append(Flag("--pipeline-parallel-size", str(par.pp_size), "parallelism.pp_size"))
    utilization = (pool.weights + pool.fixed + pool.kv) / pool.capacity
    flags += [
        Flag("--max-num-seqs", str(spec.max_running), "serving.max_running (an engine's)"),
        Flag("--max-num-batched-tokens", str(spec.token_budget), "serving.token_budget (an engine's)"),
        Flag("--gpu-memory-utilization", _round_up(utilization), "the plan's KV cache"),
    ]
    if pool.deepep:
        kernels = "deepep_low_latency" if pool.phase == "decode" else "deepep_high_throughput"
        flags.append(Flag("--all2all-backend", kernels, "simulation.alltoall_algorithm = deepep"))
        if pool.phase == "both":
            notes.append(
                "vLLM runs one DeepEP mode a server: moesim priced the low-latency kernels for decode-only "
                "iterations, the high-throughput ones given here for all"
            )
    if spec.two_batch_overlap:
        flags.append(Flag("--enable-dbo", None, "serving.two_batch_overlap (dual batch overlap)"))
    if sim.redundant_experts:
        flags += [
            Flag("--enable-eplb", None, "simulation.redundant_experts"),
            Flag("--eplb-config", f'{{"num_redundant_experts": {sim.redundant_experts}}}', "redundant experts"),
        ]
    if spec.speculative_tokens:
        method = "deepseek_mtp" if scenario.model.attention_type == "mla" else "mtp"
        text = f'{{"method": "{method}", "num_speculative_tokens": {spec.speculative_tokens}}}'
        flags.append(Flag("--speculative-config", text, "serving.speculative_tokens"))
    if pool.phase in ("prefill", "decode"):
        connector = '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}'
        flags.append(Flag("--kv-transfer-config", connector, "serving.prefill_pool (KV moved by NIXL)"))
    return "vllm serve $MODEL", flags, None, notes


def _trtllm(pool: _PoolShape) -> Built:
    par, spec, sim = pool.scenario.parallelism, pool.scenario.serving, pool.scenario.simulation
    flags = [Flag("--tp_size", str(pool.gpus // par.pp_size), "the planned layout: the server's GPUs a stage")]
    if pool.form == "DEP":
        flags.append(Flag("--ep_size", str(par.ep_size), "parallelism.ep_size"))
    if par.pp_size > 1:
        flags.append(Flag("--pp_size", str(par.pp_size), "parallelism.pp_size"))
    free = pool.capacity - pool.weights - pool.fixed
    flags += [
        Flag("--max_batch_size", str(spec.max_running), "serving.max_running (an attention rank's)"),
        Flag("--max_num_tokens", str(spec.token_budget), "serving.token_budget (an attention rank's)"),
        Flag("--kv_cache_free_gpu_memory_fraction", _round_up(pool.kv / free if free else 1.0), "the plan's KV cache"),
    ]
    config: dict[str, Any] = {}
    notes = []
    if pool.form == "DEP" and pool.ranks > 1:
        config["enable_attention_dp"] = True
        if par.tp_size > 1:
            notes.append(
                f"TensorRT-LLM's attention is data-parallel with TP 1 or tensor-parallel over the server: attention "
                f"TP {par.tp_size} inside EP {par.ep_size} has no form of its own there; the flags give data-parallel "
                "attention"
            )
    if spec.speculative_tokens:
        config["speculative_config"] = {"decoding_type": "MTP", "num_nextn_predict_layers": spec.speculative_tokens}
    if pool.phase in ("prefill", "decode"):
        config["cache_transceiver_config"] = {"backend": "DEFAULT"}
        notes.append(
            "TensorRT-LLM: the two pools' servers are joined by `trtllm-serve disaggregated -c <config>` "
            "(context_servers: the prefill pool's, generation_servers: the decode pool's)"
        )
    if pool.deepep or sim.redundant_experts or spec.two_batch_overlap:
        notes.append(
            "TensorRT-LLM brings its own wide-EP all-to-all and expert load balancer (moe_config backend WIDEEP): "
            "moesim priced DeepEP's kernels, redundant experts and two-batch overlap as the scenario sets them"
        )
    program = "trtllm-serve $MODEL"
    if pool.nodes > 1:
        program = f"mpirun -np {pool.gpus} trtllm-llmapi-launch {program}"
    return program, flags, config or None, notes


ENGINES = {"sglang": _sglang, "vllm": _vllm, "trtllm": _trtllm}


def _pool_launch(engine: str, pool: _PoolShape) -> tuple[Launch, list[str]]:
    program, flags, config, notes = ENGINES[engine](pool)
    if pool.kv_binds:
        notes.append(
            f"{pool.role}: the plan's batch is bound by the KV cache, which moesim takes as all the memory left "
            "after weights, buffers and one pass's activations (no CUDA graphs or engine workspaces)"
        )
    elif engine in DEFAULT_FRACTION:
        value = next(flag.value for flag in flags if "memory" in flag.name)
        if value is not None and float(value) > DEFAULT_FRACTION[engine]:
            notes.append(f"{pool.role}: the memory fraction {value} is above {ENGINE_NAMES[engine]}'s default")
    par = pool.scenario.parallelism
    if pool.form == "DEP" and par.ep_size % par.tp_size:
        notes.append(
            f"{pool.role}: EP {par.ep_size} inside attention TP {par.tp_size}: the engine splits experts by TP"
        )
    per_node = pool.scenario.cluster.gpus_per_node
    copies = max(1, pool.scenario.cluster.world_size // pool.gpus)
    config_flag = "--extra_llm_api_options" if config else ""
    launch = Launch(
        pool.role, program, tuple(flags), copies, pool.nodes, min(pool.gpus, per_node), (), config, config_flag
    )
    return launch, notes


def pool_shapes(scenario: Any) -> list[_PoolShape]:
    """Each pool of the planned deployment with its servers' shape and memory shares: what every engine's
    commands are built from (`engine_deployment`), built once for all of them."""
    roles = {"both": "serving", "prefill": "prefill pool", "decode": "decode pool"}
    return [_shape_of(pool, phase, roles[phase]) for pool, phase in pool_scenarios(scenario)]


def engine_deployment(scenario: Any, engine: str, shapes: Optional[list[_PoolShape]] = None) -> Deployment:
    """The serving scenario (a planned layout) as `engine`'s server commands, a pool at a time (`shapes`: its
    `pool_shapes`, where already built)."""
    launches, notes = [], []
    for shape in shapes if shapes is not None else pool_shapes(scenario):
        launch, pool_notes = _pool_launch(engine, shape)
        launches.append(launch)
        notes += pool_notes
    if any(launch.copies > 1 for launch in launches):
        notes.append("copies of a server are independent replicas: put the engine's router or a load balancer in front")
    if scenario.serving.engine not in (None, engine):
        notes.insert(0, f"the plan was priced with {ENGINE_NAMES[scenario.serving.engine]}'s kernels, not these")
    elif scenario.serving.engine is None:
        notes.insert(
            0,
            "the plan was priced with moesim's own kernels (serving.engine: null); name the engine in the scenario "
            "to price its measured kernels",
        )
    notes.append("$MODEL: the model's checkpoint (a Hugging Face repository or folder)")
    return Deployment(ENGINE_NAMES[engine], SOURCES[engine], tuple(launches), tuple(dict.fromkeys(notes)))
