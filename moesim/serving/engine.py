"""Continuous batching on one attention rank, iteration by iteration, and the latencies it gives each request.

Each iteration the engine (vLLM's and SGLang's scheduler, in outline) gives every running sequence that has its
first token one decode token (with speculative decoding: the token and its drafts to verify, gaining the expected
accepted count), then fills the rest of `serving.token_budget` with prompt chunks of the requests in
arrival order (chunked prefill), admitting a waiting request only while `serving.max_running` and the KV cache
(its prompt plus its whole output reserved) allow. The share of a prompt found in the prefix cache
(`serving.prefix_cache_hit_rate`) is not computed, but it is held in the KV cache and attended to. A request's
first token comes at the end of the iteration that finishes its prompt; each later iteration adds one token. The
deployment's requests are spread over its attention ranks: one rank is simulated with its share of the arrivals
(its rate, or its share of the concurrency: `serving.dealing` says which engines hold one request more). An engine
whose scheduler runs one step ahead (`OVERLAP_SCHEDULERS`: TensorRT-LLM) reports each first token one iteration
later and keeps a finished sequence for one more decode step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from moesim.scenario.serving import Length, ServingSpec, UniformLength


@dataclass
class Request:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefilled: int = 0
    generated: float = 0.0  # expected tokens (speculative decoding gains a fraction more than one a step)
    first_token_s: Optional[float] = None
    finish_s: Optional[float] = None


@dataclass
class EngineRun:
    """The requests as served, and what the engine did."""

    requests: list[Request]
    iterations: int
    busy_s: float
    end_s: float
    peak_running: int
    kv_limited_iterations: int = 0
    notes: list[str] = field(default_factory=list)
    running_seconds: float = 0.0  # sequences running x seconds, summed over iterations

    @property
    def mean_running(self) -> float:
        """Sequences running on average while the engine is busy (time-weighted)."""
        return self.running_seconds / self.busy_s if self.busy_s > 0 else 0.0


OVERLAP_SCHEDULERS: dict[str, str] = {
    "trtllm": "TensorRT-LLM's overlap scheduler, on by default (disable_overlap_scheduler: False): it launches step "
    "n+1 before step n's tokens are processed, 'one extra decoding step', and publishes step n's responses only "
    "after that launch (its docs, features/overlap-scheduler: the opt-in enable_client_io_during_gpu_wait brings "
    "them 'up to one iteration earlier'; PR #14061, 2026-05, an opt-in early first token)",
}
"""Engines whose scheduler reports a step's tokens one iteration late and runs a finished sequence one more decode
step. SGLang's overlap scheduler (on by default since v0.4) also launches the next batch first, but processes the
previous batch's results as soon as they are on the host (`Scheduler.event_loop_overlap`), so its tokens are not
held back a whole iteration: not listed."""


def draw_lengths(length: Length, count: int, rng: np.random.Generator) -> list[int]:
    """`count` token counts: fixed, uniform between two counts, or a recorded list cycled."""
    if isinstance(length, int):
        return [length] * count
    if isinstance(length, UniformLength):
        return [int(value) for value in rng.integers(length.min, length.max + 1, size=count)]
    return [length[index % len(length)] for index in range(count)]


def run_engine(
    spec: ServingSpec,
    iteration_seconds: Callable[..., float],
    kv_capacity_tokens: int,
    ranks: int,
    seed: int = 0,
    phase: str = "both",
    count: Optional[int] = None,
    held: Optional[int] = None,
) -> EngineRun:
    """Serve one rank's share of `spec`'s requests (`ranks` attention ranks share them; `count` of them, default
    1/`ranks` of `serving.num_requests`; a closed loop holding `held` of them at a time, default 1/`ranks` of its
    concurrency: `serving.dealing` deals the remainder). `phase`: "both" (one engine prefills and decodes),
    "prefill" (a disaggregated prefill pool: a request leaves with its first token) or "decode" (a decode pool: a
    request arrives with its prompt's KV cache and its first token)."""
    rng = np.random.default_rng(seed)
    count = count or max(1, spec.num_requests // ranks)
    inputs, outputs = draw_lengths(spec.input_tokens, count, rng), draw_lengths(spec.output_tokens, count, rng)
    if spec.arrival == "poisson":
        assert spec.request_rate is not None
        gaps = rng.exponential(ranks / spec.request_rate, size=count)
        arrivals = list(np.cumsum(gaps) - gaps[0])
    else:
        arrivals = [0.0] * count  # released as the concurrency allows
    requests = [Request(float(a), i, o) for a, i, o in zip(arrivals, inputs, outputs)]
    for request in requests:  # a cached prefix is not computed again (at least the last token is)
        request.prefilled = min(request.input_tokens - 1, int(spec.prefix_cache_hit_rate * request.input_tokens))
    if phase == "decode":
        for request in requests:
            request.prefilled, request.first_token_s, request.generated = request.input_tokens, request.arrival_s, 1.0
    keeps = (
        (lambda request: request.input_tokens)
        if phase == "prefill"
        else (lambda request: request.input_tokens + request.output_tokens)
    )  # KV tokens a running request holds
    closed_limit = (held or max(1, spec.concurrency // ranks)) if spec.arrival == "closed" else None
    pending = deque(requests)  # not yet arrived (or, closed loop, not yet released)
    waiting: deque[Request] = deque()
    running: list[Request] = []
    now = busy = running_seconds = 0.0
    iterations = peak = kv_limited = 0
    kv_used = 0
    in_system = 0
    gained = spec.tokens_per_step  # per decoding sequence and iteration
    overlapped = phase != "prefill" and spec.engine in OVERLAP_SCHEDULERS
    reported_next: list[Request] = []  # overlap scheduler: first tokens the next iteration's end reports
    while pending or waiting or running:
        # arrivals up to now (closed loop: release new requests as others finish)
        while pending and (
            (closed_limit is None and pending[0].arrival_s <= now)
            or (closed_limit is not None and in_system < closed_limit)
        ):
            request = pending.popleft()
            if closed_limit is not None:
                request.arrival_s = now
                if phase == "decode":
                    request.first_token_s = now
            waiting.append(request)
            in_system += 1
        # admit waiting requests while the running set and the KV cache allow
        while waiting and len(running) < spec.max_running:
            need = keeps(waiting[0])
            if kv_used + need > kv_capacity_tokens and running:
                kv_limited += 1
                break
            request = waiting.popleft()
            kv_used += need
            running.append(request)
        if not running:  # idle until the next arrival
            now = max(now, pending[0].arrival_s) if pending else now
            continue
        decoding = [r for r in running if r.first_token_s is not None]
        width = 1 + spec.speculative_tokens  # tokens a decoding sequence runs: its own and the drafts to verify
        budget = max(0, spec.token_budget - width * len(decoding))
        chunks: list[tuple[Request, int]] = []
        for request in running:
            if request.first_token_s is None and budget > 0:
                take = min(budget, request.input_tokens - request.prefilled)
                chunks.append((request, take))
                budget -= take
        prefill = sum(take for _, take in chunks)
        prefill_context = (
            sum(take * (r.prefilled + take / 2) for r, take in chunks) / prefill if prefill else 0.0
        )  # causal: a chunk's tokens attend, on average, to the prompt before them and half the chunk
        decode_context = float(np.mean([r.input_tokens + r.generated for r in decoding])) if decoding else 0.0
        finishing = sum(1 for r, take in chunks if r.prefilled + take >= r.input_tokens)  # their first token
        seconds = iteration_seconds(
            prefill,
            prefill_context,
            width * len(decoding),
            decode_context,
            spec.speculative_tokens * len(decoding),
            width * len(decoding) + finishing,
        )
        now += seconds
        busy += seconds
        running_seconds += seconds * len(running)
        iterations += 1
        peak = max(peak, len(running))
        for request in reported_next:  # the previous iteration's first tokens, processed under this one
            request.first_token_s = now
        reported_next = []
        for request in decoding:
            request.generated += gained
        for request, take in chunks:
            request.prefilled += take
            if request.prefilled >= request.input_tokens:
                request.first_token_s = now
                request.generated = 1
                if overlapped:
                    reported_next.append(request)
        done = phase == "prefill" or None
        # with the overlap scheduler a sequence whose last token came in the previous iteration ran this one too
        # (its stop was checked while this one ran) and leaves now; `generated` counts that extra step
        extra = gained if overlapped else 0.0
        for request in [
            r for r in running if r.first_token_s is not None and (done or r.generated >= r.output_tokens + extra)
        ]:
            request.finish_s = now
            running.remove(request)
            kv_used -= keeps(request)
            in_system -= 1
    return EngineRun(requests, iterations, busy, now, peak, kv_limited, running_seconds=running_seconds)
