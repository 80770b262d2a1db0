"""Launch expert-parallel runs of the MoE layer: spawned processes on this machine, gloo on CPU, NCCL on GPU.

`execute(scenario, ranks)` builds the scenario's MoE layer on every rank (the router from
its routing section), runs warm-up and timed repetitions of a forward (and, for
training, backward) pass on random tokens, and returns the per-phase times of every
rank: the same phase names the simulator reports. It can also save the router scores
it saw as a trace file for `moesim.workload`.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moesim.scenario import Scenario


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(rank: int, world: int, port: int, backend: str, function: Callable[..., Any], args: tuple, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    result = function(rank, world, *args)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # nobody tears down its sockets while a peer is still reading from them
    # Leave without running gloo's destructors: they sometimes abort ("terminate called without an
    # active exception") while tearing down worker threads, after all the work is done and saved.
    os._exit(0)


def spawn(function: Callable[..., Any], world: int, *args: Any, backend: Optional[str] = None) -> list[Any]:
    """Run function(rank, world, *args) in `world` processes with a process group; return each rank's JSON result."""
    backend = backend or ("nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(world, free_port(), backend, function, args, out_dir), nprocs=world, start_method="spawn")
        return [json.loads(Path(out_dir, f"rank{rank}.json").read_text()) for rank in range(world)]


def _layer_for(scenario: Scenario, device: torch.device):  # type: ignore[no-untyped-def]
    from moesim.executor.dispatch import ExpertParallel
    from moesim.executor.layer import MoELayer
    from moesim.routing.from_scenario import router_for_scenario

    model = scenario.model
    layer = MoELayer(
        model.hidden_size, model.moe_intermediate_size, model.num_experts, router_for_scenario(scenario),
        activation=model.expert_ffn_activation, num_shared_experts=model.num_shared_experts,
        parallel=ExpertParallel.from_process_group(device), seed=scenario.seed,
    )
    return layer.to(device)


def _timed_worker(rank: int, world: int, document: dict[str, Any], tokens: int, warmup: int, repeats: int,
                  backward: bool, trace_path: Optional[str]) -> dict[str, Any]:
    from moesim.scenario import scenario_from_dict

    scenario = scenario_from_dict(document)
    device = torch.device(f"cuda:{rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    layer = _layer_for(scenario, device)
    generator = torch.Generator().manual_seed(scenario.seed * 1000 + rank)
    x = torch.randn(tokens, scenario.model.hidden_size, generator=generator).to(device).requires_grad_(backward)
    token_ids = torch.randint(0, scenario.model.vocab_size, (tokens,), generator=generator).to(device)
    runs: list[dict[str, float]] = []
    for repeat in range(warmup + repeats):
        layer.timings = {}
        dist.barrier()
        began = time.perf_counter()
        out = layer(x, token_ids)
        if backward:
            with layer.phase("backward"):
                out.pow(2).mean().backward()
        layer.timings["layer"] = time.perf_counter() - began
        if repeat >= warmup:
            runs.append(dict(layer.timings))
    if trace_path:
        logits = (x.detach() @ layer.router_weight.detach().t()).cpu()
        gathered = [torch.empty_like(logits) for _ in range(world)]
        ids = [torch.empty_like(token_ids.cpu()) for _ in range(world)]
        dist.all_gather(gathered, logits)
        dist.all_gather(ids, token_ids.cpu())
        if rank == 0:
            from moesim.workload import RouterScores, save_trace

            source = torch.arange(world).repeat_interleave(tokens)
            save_trace(trace_path, [RouterScores(torch.cat(gathered), torch.cat(ids), source, 0)])
    assignment = layer.last_assignment
    return {
        "rank": rank,
        "phases": {name: statistics.median(run.get(name, 0.0) for run in runs) for name in runs[0]},
        "received_tokens": int(assignment.expert_load.sum()) if assignment is not None else 0,
        "backend": dist.get_backend(),
        "alltoall": layer.parallel.use_alltoall,
    }


def execute(scenario: Scenario, ranks: int, tokens_per_rank: Optional[int] = None, warmup: int = 2, repeats: int = 5,
            trace_path: Optional[str] = None) -> dict[str, Any]:
    """Run the scenario's MoE layer on `ranks` processes; per-phase median seconds of every rank."""
    tokens = tokens_per_rank or scenario.workload.micro_batch_size * scenario.workload.seq_len
    backward = scenario.workload.mode == "training"
    document = scenario.model_dump(mode="json")
    results = spawn(_timed_worker, ranks, document, tokens, warmup, repeats, backward, trace_path)
    phases = sorted({name for result in results for name in result["phases"]})
    return {
        "scenario": scenario.name,
        "device": torch.cuda.get_device_name(0) if results[0]["backend"] == "nccl" else "cpu",
        "backend": results[0]["backend"],
        "alltoall_single": results[0]["alltoall"],
        "ranks": ranks,
        "tokens_per_rank": tokens,
        "mode": scenario.workload.mode,
        "repeats": repeats,
        "phases_s": {name: [result["phases"].get(name, 0.0) for result in results] for name in phases},
        "received_tokens": [result["received_tokens"] for result in results],
    }
