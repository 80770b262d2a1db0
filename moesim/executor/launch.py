"""Launch expert-parallel runs of the MoE layer: spawned processes on this machine, gloo on CPU, NCCL on GPU.

`execute(scenario, ranks)` builds the scenario's MoE layer on every rank (the router from
its routing section), runs warm-up and timed repetitions of a forward (and, for
training, backward) pass on random tokens, and returns the per-phase times of every
rank: the same phase names the simulator reports. It can also save the router scores
it saw as a trace file for `moesim.workload`.

`measure_layers(scenarios, ranks)` does the same for many layers in one process group,
their repetitions spread over rounds that visit every layer in turn: a slow spell of a
shared machine then touches each layer a little instead of one layer a lot, which is
what calibration and validation need on a noisy CPU.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moesim.errors import MoesimError
from moesim.executor.dispatch import ExpertParallel
from moesim.executor.layer import MoELayer
from moesim.models.spec import GATED_ACTIVATIONS
from moesim.scenario import Scenario, scenario_from_dict
from moesim.sim.scenario_routing import router_for_scenario
from moesim.workload import RouterScores, save_trace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_backend(world: int) -> str:
    """NCCL when there is a GPU for every rank, else gloo on the CPU."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"


def threads_per_rank(world: int) -> int:
    """Each spawned rank's torch threads: its share of this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // world)


_PROGRESS_FILE: Optional[Path] = None


def report_progress(done: int, total: int) -> None:
    """Called by rank 0 of a spawned function: how far it is (the launcher shows it)."""
    if _PROGRESS_FILE is not None and dist.get_rank() == 0:
        _PROGRESS_FILE.write_text(f"{done} {total}")


def _entry(
    rank: int, world: int, port: int, backend: str, function: Callable[..., Any], args: tuple, out_dir: str
) -> None:
    global _PROGRESS_FILE
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads_per_rank(world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    _PROGRESS_FILE = Path(out_dir, "progress")
    result = function(rank, world, *args)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # nobody tears down its sockets while a peer is still reading from them
    # Leave without running gloo's destructors: they sometimes abort ("terminate called without an
    # active exception") while tearing down worker threads, after all the work is done and saved.
    os._exit(0)


def spawn(
    function: Callable[..., Any],
    world: int,
    *args: Any,
    backend: Optional[str] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> list[Any]:
    """Run function(rank, world, *args) in `world` processes with a process group; return each rank's JSON result.

    `on_progress(done, total)` hears what rank 0 passes to `report_progress`, twice a second.
    """
    backend = backend or default_backend(world)
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _entry,
            args=(world, free_port(), backend, function, args, out_dir),
            nprocs=world,
            start_method="spawn",
            join=False,
        )
        progress = Path(out_dir, "progress")
        while not context.join(timeout=0.5):
            if on_progress and progress.exists():
                try:
                    done, total = map(int, progress.read_text().split())
                except ValueError:  # caught mid-write
                    continue
                on_progress(done, total)
        return [json.loads(Path(out_dir, f"rank{rank}.json").read_text()) for rank in range(world)]


EXECUTOR_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The scenario precisions the executor computes in (`workload.precision.activations`)."""


def executor_dtype(scenario: Scenario) -> torch.dtype:
    """The torch dtype of the scenario's activations (bf16 by default); fp8 compute and padding to capacity are not
    executed."""
    name = scenario.workload.precision.activations
    if name not in EXECUTOR_DTYPES:
        raise MoesimError(
            f"workload.precision.activations: the executor computes in {', '.join(EXECUTOR_DTYPES)}, "
            f"not {name}; set workload.precision.activations=bf16"
        )
    if scenario.workload.precision.gemm != "bf16":
        raise MoesimError(
            "workload.precision.gemm: the executor runs its GEMMs in the activations' precision, not fp8; "
            "set workload.precision.gemm=bf16 to execute the scenario (the simulator models fp8)"
        )
    if scenario.routing.pad_to_capacity:
        raise MoesimError(
            "routing.pad_to_capacity: the executor sends and computes only the routed tokens; set "
            "routing.pad_to_capacity=false to execute the scenario (the simulator models the padding)"
        )
    return EXECUTOR_DTYPES[name]


def layer_for(scenario: Scenario, device: torch.device, parallel: Any = None):  # type: ignore[no-untyped-def]
    """The scenario's MoE layer on `device` in the scenario's precision (expert-parallel when `parallel` is given)."""
    model = scenario.model
    return MoELayer(
        model.hidden_size,
        model.moe_intermediate_size,
        model.num_experts,
        router_for_scenario(scenario),
        activation=model.expert_ffn_activation,
        num_shared_experts=model.num_shared_experts,
        shared_ffn_size=model.shared_expert_size * model.num_shared_experts,
        parallel=parallel,
        seed=scenario.seed,
        dtype=executor_dtype(scenario),
        device=device,
    )


def skewed_tokens(x: torch.Tensor, router_weight: torch.Tensor, skew: float) -> torch.Tensor:
    """Tokens whose router logits carry a Zipf popularity bias: expert e's logit shifted by -skew x log(e + 1).

    The shift is the minimum-norm hidden vector v with router_weight @ v = bias, added to
    every token, so expert popularity follows `workload.expert_popularity_skew` on the real
    router. Solved on the router weight's device in fp32 (or the weight's own, if wider), added in x's dtype.
    """
    if skew == 0:
        return x
    weight = router_weight.detach().to(torch.promote_types(router_weight.dtype, torch.float32))
    bias = -skew * torch.log(torch.arange(1, weight.shape[0] + 1, dtype=weight.dtype, device=weight.device))
    # the minimum-norm solution W^T (W W^T)^-1 b: a small [experts x experts] solve, supported on every device
    shift = weight.t() @ torch.linalg.solve(weight @ weight.t(), bias)
    return x + shift.to(device=x.device, dtype=x.dtype)


def _save_scores(layer: Any, x: torch.Tensor, token_ids: torch.Tensor, rank: int, world: int, trace_path: str) -> None:
    """Gather every rank's router logits and token ids; rank 0 writes them as a trace file."""
    logits = (x.detach() @ layer.router_weight.detach().t()).float().cpu()
    gathered = [torch.empty_like(logits) for _ in range(world)]
    ids = [torch.empty_like(token_ids.cpu()) for _ in range(world)]
    dist.all_gather(gathered, logits)
    dist.all_gather(ids, token_ids.cpu())
    if rank == 0:
        source = torch.arange(world).repeat_interleave(x.shape[0])
        save_trace(trace_path, [RouterScores(torch.cat(gathered), torch.cat(ids), source, 0)])


def _layers_worker(
    rank: int,
    world: int,
    documents: list[dict[str, Any]],
    tokens: list[int],
    warmup: int,
    rounds: int,
    repeats: int,
    trace_paths: list[Optional[str]],
) -> list[dict[str, Any]]:

    device = torch.device(f"cuda:{rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    setups = []
    for document, count in zip(documents, tokens):
        scenario = scenario_from_dict(document)
        backward = scenario.workload.mode == "training"
        layer = layer_for(scenario, device, ExpertParallel.from_process_group(device))
        generator = torch.Generator().manual_seed(scenario.seed * 1000 + rank)
        x = torch.randn(count, scenario.model.hidden_size, generator=generator).to(
            device=device, dtype=executor_dtype(scenario)
        )
        x = skewed_tokens(x, layer.router_weight, scenario.workload.expert_popularity_skew).requires_grad_(backward)
        token_ids = torch.randint(0, scenario.model.vocab_size, (count,), generator=generator).to(device)
        setups.append((layer, x, token_ids, backward))
    samples: list[dict[str, list[float]]] = [{} for _ in setups]
    for round_index in range(rounds):
        for index, (layer, x, token_ids, backward) in enumerate(setups):
            for repeat in range(repeats + (warmup if round_index == 0 else 0)):
                dist.barrier()
                began = time.perf_counter()
                with torch.set_grad_enabled(backward):
                    out = layer(x, token_ids)
                    if backward:
                        with layer.phase("backward"):
                            out.float().pow(2).mean().backward()
                timings = layer.clock.read()  # waits for a GPU's queued work
                timings["layer"] = time.perf_counter() - began
                if round_index > 0 or repeat >= warmup:
                    for name, seconds in timings.items():
                        samples[index].setdefault(name, []).append(seconds)
            report_progress(round_index * len(setups) + index + 1, rounds * len(setups))
    results = []
    for (layer, x, token_ids, _), phase_samples, trace_path in zip(setups, samples, trace_paths):
        if trace_path:
            _save_scores(layer, x, token_ids, rank, world, trace_path)
        assignment = layer.last_assignment
        results.append(
            {
                "phases": {name: statistics.median(values) for name, values in phase_samples.items()},
                "samples": len(phase_samples["layer"]),
                "served_slots": int(assignment.expert_load.sum()) if assignment is not None else 0,
                "local_load": layer.last_local_load,
                "alltoall": layer.parallel.use_alltoall,
            }
        )
    return results


def measure_layers(
    scenarios: Sequence[Scenario],
    ranks: int,
    tokens_per_rank: Optional[Sequence[int]] = None,
    warmup: int = 2,
    rounds: int = 1,
    repeats: int = 5,
    trace_paths: Optional[Sequence[Optional[str]]] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> list[dict[str, Any]]:
    """Each scenario's MoE layer on `ranks` processes: per phase, every rank's median seconds.

    Every layer runs `repeats` times in each of `rounds` passes over all layers (plus
    `warmup` untimed runs in the first); the median is over all rounds x repeats.
    """
    tokens = list(tokens_per_rank or [s.workload.micro_batch_size * s.workload.seq_len for s in scenarios])
    documents = [s.model_dump(mode="json") for s in scenarios]
    paths = list(trace_paths or [None] * len(scenarios))
    per_rank = spawn(_layers_worker, ranks, documents, tokens, warmup, rounds, repeats, paths, on_progress=on_progress)
    measured = []
    for index, scenario in enumerate(scenarios):
        results = [rank_results[index] for rank_results in per_rank]
        phases = sorted({name for result in results for name in result["phases"]})
        measured.append(
            {
                "scenario": scenario.name,
                "tokens_per_rank": tokens[index],
                "samples": results[0]["samples"],
                "alltoall_single": results[0]["alltoall"],
                "phases_s": {name: [result["phases"].get(name, 0.0) for result in results] for name in phases},
                "served_slots": [result["served_slots"] for result in results],
                "local_load": [result["local_load"] for result in results],
            }
        )
    return measured


def layer_bytes(scenario: Scenario, ranks: int, tokens_per_rank: Optional[int] = None) -> float:
    """Bytes one rank holds to run the scenario's MoE layer: its experts' weights (and their gradients when
    training), the router and shared experts, and a few copies of its tokens' activations (a rough bound)."""
    model = scenario.model
    element = 4 if executor_dtype(scenario) == torch.float32 else 2
    gated = 3 if model.expert_ffn_activation in GATED_ACTIVATIONS else 2
    experts = model.num_experts // ranks * gated * model.hidden_size * model.moe_intermediate_size
    shared = model.num_shared_experts * gated * model.hidden_size * model.shared_expert_size
    weights = (experts + shared + model.hidden_size * model.num_experts) * element
    tokens = tokens_per_rank or scenario.workload.micro_batch_size * scenario.workload.seq_len
    activations = 8 * tokens * model.top_k * max(model.hidden_size, model.moe_intermediate_size) * element
    return weights * (2 if scenario.workload.mode == "training" else 1) + activations


def check_host_memory(scenario: Scenario, ranks: int, tokens_per_rank: Optional[int] = None) -> None:
    """Stop before launching when the ranks' layers cannot fit in this machine's available memory."""
    try:
        available = next(
            int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable")
        )
    except (OSError, StopIteration):
        return  # not Linux: let the ranks try
    needed = ranks * layer_bytes(scenario, ranks, tokens_per_rank)
    if needed > 0.8 * available:
        raise MoesimError(
            f"execute: {ranks} ranks of {scenario.model.name}'s MoE layer need about {needed / 1e9:,.1f} GB, "
            "this machine "
            f"has {available / 1e9:,.1f} GB available; use a smaller model (--set model=tiny-moe), fewer "
            "tokens or more "
            "ranks"
        )


def execute(
    scenario: Scenario,
    ranks: int,
    tokens_per_rank: Optional[int] = None,
    warmup: int = 2,
    repeats: int = 5,
    trace_path: Optional[str] = None,
) -> dict[str, Any]:
    """Run the scenario's MoE layer on `ranks` processes; per-phase median seconds of every rank."""
    backend = default_backend(ranks)
    if backend != "nccl":
        check_host_memory(scenario, ranks, tokens_per_rank)
    (measured,) = measure_layers(
        [scenario], ranks, [tokens_per_rank] if tokens_per_rank else None, warmup, 1, repeats, [trace_path]
    )
    return {
        "scenario": scenario.name,
        "device": torch.cuda.get_device_name(0) if backend == "nccl" else "cpu",
        "backend": backend,
        "alltoall_single": measured["alltoall_single"],
        "ranks": ranks,
        "tokens_per_rank": measured["tokens_per_rank"],
        "mode": scenario.workload.mode,
        "repeats": repeats,
        "phases_s": measured["phases_s"],
        "served_slots": measured["served_slots"],
    }
