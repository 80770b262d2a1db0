"""The `serving` section: a stream of requests for `moesim serve` (continuous batching on the scenario's cluster)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from moesim.scenario.sections import _Section


class UniformLength(_Section):
    """Tokens drawn uniformly between two counts (both included)."""

    min: int = Field(..., gt=0, description="Fewest tokens.")
    max: int = Field(..., gt=0, description="Most tokens.")

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); swap them")
        return self


Length = Union[int, UniformLength, list[int]]
"""Tokens per request: a fixed count, {min, max} drawn uniformly, or a recorded list (cycled)."""


class PoolSpec(_Section):
    """A disaggregated prefill pool: its own nodes and parallelism (the scenario's cluster is the decode pool)."""

    num_nodes: int = Field(..., gt=0, description="Nodes of the prefill pool.")
    ep_size: Optional[int] = Field(
        None, gt=0, description="Its expert parallelism; default: the scenario's, at most the pool's GPUs."
    )
    tp_size: int = Field(1, gt=0, description="Its tensor parallelism.")
    expert_tp_size: Optional[int] = Field(
        None, gt=0, description="Its expert tensor parallelism; default: the scenario's."
    )


class ServingSpec(_Section):
    """Requests and the engine's batching budget (vLLM / SGLang style continuous batching with chunked prefill)."""

    input_tokens: Length = Field(1024, description="Prompt tokens per request: N, {min, max} (uniform) or a list.")
    output_tokens: Length = Field(256, description="Generated tokens per request: N, {min, max} or a list.")
    arrival: Literal["poisson", "closed"] = Field(
        "closed",
        description="poisson: requests arrive at `request_rate` per second; closed: `concurrency` requests are in "
        "the system at all times (a new one arrives as one finishes).",
    )
    request_rate: Optional[float] = Field(
        None, gt=0, description="Requests per second for the whole deployment (poisson arrivals)."
    )
    concurrency: int = Field(64, gt=0, description="Requests in flight for the whole deployment (closed arrivals).")
    num_requests: int = Field(400, gt=0, description="Requests simulated (the first 10% are warm-up, not counted).")
    measure: Literal["steady", "benchmark"] = Field(
        "steady",
        description="How a closed loop's latencies are measured: `steady`, while it holds its concurrency (filling "
        "and draining left out); `benchmark`, every request from a simultaneous start, as serving benchmark clients "
        "(aiperf, genai-perf, vLLM's and SGLang's bench_serving) average them, the first wave's queue of prompts "
        "included.",
    )
    engine: Optional[Literal["trtllm", "sglang", "vllm"]] = Field(
        None,
        description="The serving engine whose measured kernels price what they replace (aiconfigurator's tables: "
        "its TP all-reduce, CUDA graphs in decode iterations); null: moesim's own kernel models throughout.",
    )
    engine_version: Optional[str] = Field(
        None, description="The engine's version (the nearest measured one not newer is read); null: the oldest."
    )
    token_budget: int = Field(8192, gt=0, description="Tokens per iteration: decodes first, then prefill chunks.")
    max_running: int = Field(256, gt=0, description="Sequences an engine (one attention rank) runs at once at most.")
    price_per_gpu_hour: float = Field(3.0, ge=0, description="US dollars per GPU-hour, for the cost per token.")
    power_price_per_kwh: float = Field(
        0.0,
        ge=0,
        description="US dollars per kWh of electricity, added to price_per_gpu_hour as each GPU's datasheet board "
        "power for the whole hour (an upper bound on what it draws; hosts and cooling left out); 0: power in the "
        "GPU-hour price.",
    )
    speculative_tokens: int = Field(
        0,
        ge=0,
        description="Speculative decoding with the model's multi-token prediction module: draft tokens per decode "
        "step (the module run that many times), verified in the next step; 0 = off.",
    )
    acceptance_rate: float = Field(
        0.85, ge=0, le=1, description="Chance a draft token is accepted, each in turn (DeepSeek-V3: 0.85-0.9)."
    )

    prefix_cache_hit_rate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each prompt already in the prefix cache (SGLang's radix cache, DeepSeek's context "
        "cache): those tokens are not computed, but their KV cache is held and attended to (DeepSeek: 0.563).",
    )
    two_batch_overlap: bool = Field(
        False,
        description="Split each iteration into two half batches whose all-to-alls run under each other's compute "
        "(SGLang's two-batch overlap, DeepSeek's serving); communication SMs from simulation.comm_sms.",
    )
    prefill_pool: Optional[PoolSpec] = Field(
        None,
        description="Prefill/decode disaggregation (DeepSeek, SGLang, Dynamo): prompts run on this pool, the KV cache "
        "goes over the network, the scenario's own cluster decodes; null = one pool does both.",
    )

    @property
    def tokens_per_step(self) -> float:
        """Tokens a decoding sequence gains per step: its verified token and the accepted drafts before the first
        rejected one, sum of acceptance_rate^i for i = 0..speculative_tokens."""
        return sum(self.acceptance_rate**index for index in range(self.speculative_tokens + 1))

    @model_validator(mode="after")
    def _rate_for_poisson(self) -> "ServingSpec":
        if self.arrival == "poisson" and self.request_rate is None:
            raise ValueError("serving.request_rate: poisson arrivals need a rate; set request_rate (requests/s)")
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if isinstance(value, list) and (not value or min(value) < 1):
                raise ValueError(f"serving.{name}: a recorded list needs token counts of at least 1")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"serving.{name}: {value} tokens; use at least 1")
        return self


def mean_tokens(length: Length) -> float:
    """The mean token count a length draws."""
    if isinstance(length, int):
        return float(length)
    if isinstance(length, list):
        return sum(length) / len(length)
    return (length.min + length.max) / 2


def most_tokens(length: Length) -> int:
    """The largest token count a length can draw."""
    if isinstance(length, int):
        return length
    if isinstance(length, list):
        return max(length)
    return length.max
