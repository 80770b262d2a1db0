"""The KV cache a serving engine actually allocates: each engine's own rule for the memory it keeps back.

moesim's memory model gives a GPU's room after the weights, the all-to-all buffers and one pass's activations
(`MemoryBreakdown.kv_room_bytes`). No engine hands all of that to its KV cache; each keeps memory back by a rule of
its own, at its defaults:

- **SGLang** (`python/sglang/srt/server_args.py`, `_handle_gpu_memory_settings`, 0.5.x): `mem_fraction_static` =
  (GPU memory - reserved) / GPU memory, the weights and the KV pool within it, where reserved (MiB) = 512 +
  1.5 x max(chunked_prefill_size, 2048) + 2 x cuda_graph_max_bs + 1024 x tp_size x pp_size / 8, with data-parallel
  attention 3 x cuda_graph_max_bs x dp_size more (and 1.5 x that again past 300 graphs), at least 10 GiB on GPUs
  over 60 GiB, and 2 GiB more for a draft model (EAGLE / MTP). On H100 and H200 chunked_prefill_size is 8,192 and
  cuda_graph_max_bs 256 below TP 4, 512 from it. The activations live inside the reserve, so the KV cache is the
  GPU memory less the reserve, the weights and the buffers allocated before the pool (DeepEP's).
- **vLLM** (`gpu_memory_utilization`, default 0.9, `vllm/config/cache.py`): the engine uses 0.9 of the whole GPU,
  and its KV cache is that less the weights, the buffers and the profiled forward pass's peak activations.
- **TensorRT-LLM** (`KvCacheConfig.free_gpu_memory_fraction`, default 0.9, `tensorrt_llm/llmapi/llm_args.py`): the
  KV cache takes 0.9 of the memory free after the model is loaded and a forward pass at `max_num_tokens` ran.

A scenario with no engine named keeps moesim's own figure (all the room), which the note of `moesim serve` states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moesim.sim.plan import attention_ranks_per_expert_group

if TYPE_CHECKING:
    from moesim.scenario import Scenario
    from moesim.sim.memory import MemoryBreakdown

MIB = 2**20
VLLM_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's `gpu_memory_utilization` default: the share of the whole GPU the engine takes."""
TRTLLM_FREE_GPU_MEMORY_FRACTION = 0.9
"""TensorRT-LLM's `free_gpu_memory_fraction` default: the share of the free memory its KV cache takes."""


def sglang_reserved_bytes(scenario: "Scenario", capacity_bytes: float) -> float:
    """The memory SGLang keeps out of `mem_fraction_static` at its defaults for this server (see the module
    docstring): one SGLang server spans an expert-parallel group, its `tp_size` every GPU of it and its `dp_size`
    the attention ranks in it; its chunked prefill is the per-rank token budget times those ranks."""
    par, spec = scenario.parallelism, scenario.serving
    dp = max(1, attention_ranks_per_expert_group(scenario))
    server_tp = dp * par.tp_size
    gpu_mib = capacity_bytes / MIB
    graphs = 256 if server_tp < 4 else 512  # cuda_graph_max_bs on 60-160 GiB GPUs (H100, H200)
    if gpu_mib < 60 * 1024:  # A100 40 GB, L40: 160 from TP 4, else 32
        graphs = 160 if server_tp >= 4 else 32
    elif gpu_mib >= 160 * 1024:  # B200 and larger
        graphs = 512
    chunk = spec.token_budget * dp
    reserved = 512 + 1.5 * max(chunk, 2048) + 2 * graphs + 1024 * server_tp * par.pp_size / 8
    if dp > 1:
        reserved += graphs * dp * 3 + (graphs * dp * 1.5 if graphs > 300 else 0.0)
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    if spec.speculative_tokens:
        reserved += 2 * 1024
    return reserved * MIB


def engine_kv_room_bytes(scenario: "Scenario", memory: "MemoryBreakdown") -> float:
    """Bytes of KV cache a GPU holds under the scenario's engine (its default memory rule; see the module
    docstring), or moesim's own room where no engine is named."""
    engine = scenario.serving.engine
    room = memory.kv_room_bytes
    if engine == "sglang":
        reserved = sglang_reserved_bytes(scenario, memory.capacity_bytes)
        return memory.capacity_bytes - reserved - memory.weights_bytes - memory.alltoall_buffer_bytes
    if engine == "vllm":
        return room - (1 - VLLM_GPU_MEMORY_UTILIZATION) * memory.capacity_bytes
    if engine == "trtllm":
        return TRTLLM_FREE_GPU_MEMORY_FRACTION * room
    return room


def engine_memory_words(scenario: "Scenario") -> str:
    """One line on the KV cache rule applied, for `moesim serve`'s notes."""
    engine = scenario.serving.engine
    if engine == "sglang":
        return "KV cache as SGLang sizes it: the GPU less its reserve (mem_fraction_static's rule), weights, buffers"
    if engine == "vllm":
        return "KV cache as vLLM sizes it: gpu_memory_utilization 0.9 of the GPU less weights, buffers, activations"
    if engine == "trtllm":
        return "KV cache as TensorRT-LLM sizes it: free_gpu_memory_fraction 0.9 of what the model and a pass leave"
    return "KV cache: all memory left after weights, buffers and one pass's activations (no engine named)"
