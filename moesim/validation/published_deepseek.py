"""DeepSeek-V3/R1 as DeepSeek serves it on H800 (open-infra-index, 2025-03-01) beside moesim: a decode node's output
tokens/s and a user's tokens/s at the batch those two figures imply, a prefill node's input tokens/s; and the
iterations at stated batches, against DeepSeek's own profiles and SGLang's H100 run (rows of `validation/PUBLISHED.md`).
"""

from __future__ import annotations

import functools

from moesim.scenario import Scenario
from moesim.serving import prefill_pool_scenario
from moesim.serving.iteration import IterationCost
from moesim.validation.published_serving import ServingFigure, published_scenario

DEEPSEEK = "deepseek-v3-serving-h800.yaml"
DEEPSEEK_USER_TOKENS_PER_S = 21.0
"""The middle of DeepSeek's '20-22 tokens per second' per user."""
DEEPSEEK_DECODE_NODE_TOKENS_PER_S = 14.8e3
DEEPSEEK_PREFILL_NODE_TOKENS_PER_S = 73.7e3


@functools.lru_cache(maxsize=1)
def _prefill_unit() -> tuple[Scenario, IterationCost]:
    """DeepSeek's prefill unit (4 nodes, EP32) and its iteration times, built once for the production row and the
    profile's."""
    prefill = prefill_pool_scenario(published_scenario(DEEPSEEK, ["serving.prefill_pool.num_nodes=4"]))
    return prefill, IterationCost(prefill)


def deepseek_figures() -> list[ServingFigure]:
    """A decode node at the batch DeepSeek's figures imply, and a prefill node's input capacity."""
    decode = published_scenario(DEEPSEEK, ["serving.prefill_pool=null"])
    spec = decode.serving
    per_gpu = DEEPSEEK_DECODE_NODE_TOKENS_PER_S / decode.cluster.gpus_per_node
    batch = round(per_gpu / DEEPSEEK_USER_TOKENS_PER_S)  # Little's law: sequences in decode per GPU
    kv_length = spec.input_tokens + spec.output_tokens / 2  # type: ignore[operator]
    width = 1 + spec.speculative_tokens
    step = IterationCost(decode).seconds(0, 0, width * batch, kv_length, spec.speculative_tokens * batch)
    user = spec.tokens_per_step / step
    prefill, prefill_cost = _prefill_unit()
    hit = spec.prefix_cache_hit_rate
    computed = spec.input_tokens * (1 - hit)  # type: ignore[operator]
    context = spec.input_tokens * hit + computed / 2  # type: ignore[operator]
    tokens = spec.token_budget
    prefill_step = prefill_cost.seconds(tokens, context, 0, 0)
    prefill_node = prefill.cluster.gpus_per_node * tokens / prefill_step / (1 - hit)
    computed_node = DEEPSEEK_PREFILL_NODE_TOKENS_PER_S * (1 - hit)
    source = "DeepSeek, open-infra-index, 'DeepSeek-V3/R1 Inference System Overview' (2025-03-01), 24 h averages"
    lengths = (
        "requests of 4,384 input and 1,211 output tokens (from the day's 608B input and 168B output tokens and the "
        "average KV length 4,989); MTP acceptance 85%; DeepEP's normal kernels on 20 SMs (its low-latency ones "
        "hold none in flight); fused engine kernels"
    )
    label = f"{decode.name} (decode 18 x 8 H800, prefill 4 x 8 H800)"
    implied = spec.tokens_per_step / DEEPSEEK_USER_TOKENS_PER_S
    batch_note = (
        f"at the batch the two published figures imply, {batch} sequences a GPU (1,850 tokens/s a GPU over 21 "
        f"tokens/s a user), moesim's decode step is {step * 1e3:.1f} ms against the {implied * 1e3:.0f} ms they "
        "imply. Each micro-batch runs its own attention kernels, under the other's all-to-alls as DeepSeek "
        "describes its overlap, and DeepEP's low-latency kernels hold the SMs for their send and receive phases "
        "only (the step-level checks below hold the same model against DeepSeek's own trace); "
    )
    return [
        ServingFigure(
            label,
            f"decode, {batch} sequences a GPU",
            "output tokens/s per node",
            DEEPSEEK_DECODE_NODE_TOKENS_PER_S,
            decode.cluster.gpus_per_node * batch * user,
            source,
            batch_note + lengths,
        ),
        ServingFigure(
            label,
            f"decode, {batch} sequences a GPU",
            "output tokens/s per user",
            DEEPSEEK_USER_TOKENS_PER_S,
            user,
            source + " (20-22 per user)",
            batch_note + lengths,
        ),
        ServingFigure(
            label,
            "prefill, saturated",
            "input tokens/s per node (cache hits included)",
            DEEPSEEK_PREFILL_NODE_TOKENS_PER_S,
            prefill_node,
            source,
            f"moesim's is a unit's capacity ({tokens:,} tokens a GPU an iteration, two micro-batches overlapped, "
            "attention included, as DeepSeek describes; 56.3% of each prompt from the cache, as the day's hit "
            "rate); DeepSeek's is a day's average of a pool sized for its latency, whose load the source does not "
            f"state (73.7K is {DEEPSEEK_PREFILL_NODE_TOKENS_PER_S / prefill_node:.0%} of moesim's capacity). "
            f"DeepSeek's own profile runs a prefill node at {DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S:,.0f} "
            f"computed tokens/s, {DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S / computed_node:.2f}x the "
            f"{computed_node:,.0f} the day averaged (73.7K less the 56.3% from the cache; moesim against that "
            "profile: the step-level rows below): the day's figure is a load, not a capacity; " + lengths,
        ),
    ]


DEEPSEEK_PROFILE_DECODE_STEP_S = 0.096
"""DeepSeek's profile-data decode.json (EP128, 128 requests a GPU, 4K prompts, two micro-batches, MTP): one decode
step end to end, 87.3 ms of it in the 61 layers, as read from the trace by zdszero.github.io ('deepseek_profile',
D4 profile, H800 column); its FlashMLA kernel takes 255 us per micro-batch and layer, its attention 388 us."""
DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S = 62713.0
"""DeepSeek's profile-data prefill.json (EP32, 16,384 tokens a GPU, 4K prompts), as a node's input tokens/s: the
SGLang team's reading of it (lmsys.org, 'Deploying DeepSeek with PD Disaggregation and Large-scale Expert
Parallelism on 96 H100 GPUs', 2025-05-05, Overall Throughput table)."""
SGLANG_DECODE_SEQUENCES = 256
SGLANG_DECODE_NODE_TOKENS_PER_S = 22282.0
"""The same post: SGLang's decode on 9 x 8 H100 (EP72, 288 expert slots by EPLB, two-batch overlap, DeepEP's
low-latency kernels), 256 sequences a GPU, 2,000-token inputs, no MTP: output tokens/s per node."""


def deepseek_step_checks() -> list[ServingFigure]:
    """The decode and prefill iterations against DeepSeek's own profiles and SGLang's H100 run, at the batches
    those sources state: the production rows above rest on loads the sources do not state, these do not."""
    profile = published_scenario(
        DEEPSEEK, ["serving.prefill_pool=null", "cluster.num_nodes=16", "parallelism.ep_size=128"]
    )
    spec = profile.serving
    sequences = 128
    step = IterationCost(profile).seconds(0, 0, 2 * sequences, 4096, sequences)
    sglang = published_scenario(
        DEEPSEEK,
        [
            "serving.prefill_pool=null",
            "cluster.preset=dgx-h100",
            "cluster.num_nodes=9",
            "parallelism.ep_size=72",
            "serving.speculative_tokens=0",
        ],
    )
    sglang_step = IterationCost(sglang).seconds(0, 0, SGLANG_DECODE_SEQUENCES, 2000)
    prefill, prefill_cost = _prefill_unit()
    tokens = spec.token_budget
    prefill_step = prefill_cost.seconds(tokens, 4096 / 2, 0, 0)
    lmsys = "lmsys.org, SGLang team, 'Deploying DeepSeek with PD Disaggregation and Large-scale EP' (2025-05-05)"
    common = (
        "DeepSeek-V3's serving scenario (FP8 GEMMs and dispatch, DeepEP's normal kernels on 20 SMs, 32 redundant "
        "experts)"
    )
    return [
        ServingFigure(
            "DeepSeek profile-data decode.json (16 x 8 H800, EP128)",
            "decode step, 128 requests a GPU, 4K context",
            "ms",
            DEEPSEEK_PROFILE_DECODE_STEP_S * 1e3,
            step * 1e3,
            "DeepSeek profile-data (decode.json), step read from the trace by zdszero.github.io: 96 ms end to end",
            f"{common} at EP128 on 16 nodes; two micro-batches of 64 requests with one MTP draft each; a "
            "perfectly balanced routing, as the profile simulates",
        ),
        ServingFigure(
            "SGLang on 9 x 8 H100 (EP72, decode)",
            f"decode, {SGLANG_DECODE_SEQUENCES} sequences a GPU, 2K context",
            "output tokens/s per node",
            SGLANG_DECODE_NODE_TOKENS_PER_S,
            sglang.cluster.gpus_per_node * SGLANG_DECODE_SEQUENCES / sglang_step,
            lmsys,
            f"{common} on dgx-h100 nodes, EP72 with 288 expert slots, no MTP; SGLang reports its MoE kernels 25% "
            "slower than DeepSeek's and unfused small kernels ('Other Kernels'); moesim assumes an engine's fused "
            "kernels",
        ),
        ServingFigure(
            "DeepSeek profile-data prefill.json (4 x 8 H800, EP32)",
            "prefill, 16,384 tokens a GPU, 4K prompts",
            "input tokens/s per node",
            DEEPSEEK_PROFILE_PREFILL_NODE_TOKENS_PER_S,
            prefill.cluster.gpus_per_node * tokens / prefill_step,
            lmsys + " (its reading of DeepSeek's prefill.json)",
            f"{common}; two micro-batches, each token crossing to each of its nodes once; moesim is faster than "
            "the profile: its compute covers DeepEP's transfers (kernels within 3% of DeepEP's published EP 32 "
            "rate), so the gap is compute or overlap moesim does not price, not located yet",
        ),
    ]
