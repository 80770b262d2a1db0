"""A pool's capacity: the request rate one engine sustains at its largest steady batch, and the load an offered
rate puts on it.

A continuous-batching engine is busy whenever a sequence runs, so the share of time it is busy does not say
whether it keeps up: a decode engine at a fifth of its capacity still runs iteration after iteration. What does is
the offered rate against the rate the engine serves when its queue never empties. Throughput grows with the batch
(the weights are read once for more tokens), so that rate is the engine's at its largest steady batch: as many
sequences as `serving.max_running` and the KV cache allow (each holding its prompt and its whole output, as the
engine reserves them), and, where one engine prefills too, no more than leave room in the token budget for the
prompts that replace the finished ones. At that batch, per iteration, c decoding sequences finish c x
tokens_per_step / output requests and as many prompts are prefilled; the rate is that over the iteration's time at
the requests' mean lengths and mean contexts. An offered rate below it is served with a queue that stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from moesim.scenario.serving import ServingSpec, mean_tokens


@dataclass(frozen=True)
class PoolCapacity:
    """What one engine of a pool sustains: requests per second at its largest steady batch (`sequences` decoding,
    or, in a prefill pool, prompt tokens an iteration)."""

    requests_per_s: float
    sequences: float

    def load(self, offered_per_s: float) -> float:
        """The share of the capacity an offered rate (requests/s to this engine) uses."""
        return offered_per_s / self.requests_per_s if self.requests_per_s > 0 else float("inf")


def pool_capacity(
    spec: ServingSpec, iteration_seconds: Callable[..., float], kv_capacity_tokens: int, phase: str = "both"
) -> PoolCapacity:
    """One engine's capacity (`phase` as `engine.run_engine`'s: "both", "prefill" or "decode"), from its iteration
    times at the requests' mean lengths."""
    inputs, outputs = mean_tokens(spec.input_tokens), mean_tokens(spec.output_tokens)
    cached = min(inputs - 1, spec.prefix_cache_hit_rate * inputs)  # a cached prefix is not computed again
    computed = inputs - cached
    prompt_context = cached + computed / 2  # a computed token attends to the prefix and half its own prompt
    if phase == "prefill":  # prompts only: each leaves with its first token, holding its prompt's KV cache
        prompts = min(spec.max_running, kv_capacity_tokens // max(1.0, inputs))
        tokens = max(1, round(min(spec.token_budget, prompts * computed)))
        finished = tokens / computed
        seconds = iteration_seconds(tokens, prompt_context, 0, 0.0, 0, max(1, round(finished)))
        return PoolCapacity(finished / seconds, 0.0)
    width, gained = 1 + spec.speculative_tokens, spec.tokens_per_step
    running = min(spec.max_running, kv_capacity_tokens // max(1.0, inputs + outputs))
    prefilled = 0.0 if phase == "decode" else computed  # a decode pool's requests arrive prefilled
    # decodes first; the prompts replacing the finished ones must fit the rest of the budget
    sequences = max(1, int(min(running, spec.token_budget / (width + gained * prefilled / outputs))))
    finished = sequences * gained / outputs  # requests per iteration
    prompt_tokens = round(finished * prefilled)
    seconds = iteration_seconds(
        prompt_tokens,
        prompt_context if prompt_tokens else 0.0,
        width * sequences,
        inputs + outputs / 2,
        spec.speculative_tokens * sequences,
        width * sequences + (max(1, round(finished)) if prompt_tokens else 0),
    )
    return PoolCapacity(finished / seconds, float(sequences))
