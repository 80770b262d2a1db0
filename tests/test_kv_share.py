"""A TP rank's share of the KV cache: GQA splits its KV heads over the attention ranks (replicating them where
there are fewer heads than ranks); MLA's latent is read by every head, so every rank holds all of it (DeepSeek-V2,
section 2.1; the reason SGLang runs DeepSeek's attention data-parallel)."""

from __future__ import annotations

import pytest

from moesim.models import accounting, model_preset
from moesim.scenario import scenario_from_dict
from moesim.serving.iteration import IterationCost


@pytest.mark.parametrize(
    ("preset", "tp", "share"),
    [
        ("deepseek-v3", 1, 1.0),
        ("deepseek-v3", 8, 1.0),  # one latent a token, every head reads it
        ("mixtral-8x7b", 8, 1 / 8),  # 8 KV heads over 8 ranks
        ("mixtral-8x7b", 2, 1 / 2),
        ("qwen3-235b-a22b", 8, 1 / 4),  # 4 KV heads: two ranks hold each
        ("qwen3-235b-a22b", 4, 1 / 4),
    ],
)
def test_a_tp_ranks_share_of_a_tokens_kv_cache(preset: str, tp: int, share: float) -> None:
    assert accounting.kv_share_per_tp_rank(model_preset(preset), tp) == pytest.approx(share)


def test_an_mla_engine_at_tp_2_holds_what_one_gpu_holds_not_twice() -> None:
    """DeepSeek-V3 served at attention TP 2: each GPU keeps the whole latent of every token its engine holds, so
    the engine's KV room is one GPU's free memory over a token's cache (it was credited twice that)."""
    document = {
        "model": "deepseek-v3",
        "cluster": {"preset": "hgx-h800", "num_nodes": 4},
        "parallelism": {"tp_size": 2, "ep_size": 32},
        "workload": {"mode": "inference", "precision": {"weights": "fp8", "gemm": "fp8"}},
        "serving": {"input_tokens": 1024, "output_tokens": 256},
    }
    cost = IterationCost(scenario_from_dict(document))
    memory = cost.forward.memory()
    free = memory.capacity_bytes - memory.weights_bytes - memory.alltoall_buffer_bytes - memory.activations_bytes
    per_token = accounting.kv_cache_bytes_per_token(cost.scenario.model, cost.scenario.workload.precision)
    assert cost.kv_capacity_tokens() == int(free / per_token)
