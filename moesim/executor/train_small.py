"""A small MoE language model trained for real, to watch routing balance (or collapse) over training.

Byte-level language modelling on text already on every machine (the Python standard
library's source files): token ids are bytes (vocabulary 256). The model is a small
decoder-only transformer whose FFNs are `MoELayer`s driven by moesim's routers. Four
balancing set-ups:

* `none` — top-k routing and nothing else: the load tends to collapse onto few experts;
* `switch` — the Switch load-balancing loss (coefficient 0.01, Megatron's per-slot normalisation);
* `zloss` — the Switch loss plus the router z-loss (ST-MoE, coefficient 0.001);
* `bias` — DeepSeek-V3's auxiliary-loss-free balancing (`bias_balanced` router, one bias
  update per step, rate 0.01).

Each run logs every layer's per-expert load at every step, and saves the router scores
of its last batch as a trace file that the simulator can replay.
"""

from __future__ import annotations

import json
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moesim.executor.layer import MoELayer
from moesim.routing import make_router, router_z_loss, switch_load_balancing_loss
from moesim.workload import RouterScores, save_trace

BALANCING = ("none", "switch", "zloss", "bias")


def stdlib_text(max_bytes: int = 4_000_000) -> bytes:
    """Bytes of the Python standard library's source files, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


@dataclass(frozen=True)
class SmallConfig:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    experts: int = 8
    top_k: int = 2
    ffn: int = 256
    seq_len: int = 128
    batch: int = 16
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0


class SmallMoELM(nn.Module):
    """Embedding, [attention + MoE] x layers, output head."""

    def __init__(self, config: SmallConfig, balancing: str) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.config, self.balancing = config, balancing
        self.embed = nn.Embedding(256, config.hidden)
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(config.hidden, config.heads, batch_first=True) for _ in range(config.layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(config.hidden) for _ in range(2 * config.layers))
        rule = "bias_balanced" if balancing == "bias" else "top_k"
        options = {"bias_update_rate": 0.01} if balancing == "bias" else {}
        self.moe = nn.ModuleList(
            MoELayer(
                config.hidden,
                config.ffn,
                config.experts,
                make_router(rule, num_experts=config.experts, top_k=config.top_k, **options),
                seed=config.seed + index,
            )
            for index in range(config.layers)
        )
        self.head = nn.Linear(config.hidden, 256)

    def forward(self, tokens: torch.Tensor, scores: Optional[list[RouterScores]] = None) -> torch.Tensor:
        """Next-byte logits; with `scores`, also collect each MoE layer's router scores."""
        batch, length = tokens.shape
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        flat_ids = tokens.reshape(-1)
        x = self.embed(tokens)
        for index, (attention, moe) in enumerate(zip(self.attention, self.moe)):
            h = self.norms[2 * index](x)
            x = x + attention(h, h, h, attn_mask=mask, need_weights=False)[0]
            h = self.norms[2 * index + 1](x).reshape(batch * length, -1)
            x = x + moe(h, flat_ids).reshape(batch, length, -1)
            if scores is not None:
                scores.append(RouterScores(moe.last_logits.detach(), flat_ids, torch.zeros_like(flat_ids), index))
        return self.head(x)

    def auxiliary_loss(self) -> torch.Tensor:
        loss = torch.zeros(())
        if self.balancing in ("switch", "zloss"):
            for moe in self.moe:
                probs = torch.softmax(moe.last_logits, dim=-1)
                loss = loss + 0.01 * switch_load_balancing_loss(probs, moe.last_assignment.routing_map())
                if self.balancing == "zloss":
                    loss = loss + 0.001 * router_z_loss(moe.last_logits)
        return loss


def train(
    config: SmallConfig, balancing: str, out_dir: Path, on_step: Optional[Callable[[int], None]] = None
) -> dict[str, Any]:
    """Train one set-up; returns its log (loss and per-layer expert loads per step)."""
    if balancing not in BALANCING:
        raise ValueError(f"balancing must be one of {BALANCING}, got {balancing!r}")
    data = torch.frombuffer(bytearray(stdlib_text()), dtype=torch.uint8).long()
    generator = torch.Generator().manual_seed(config.seed)
    model = SmallMoELM(config, balancing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    log: dict[str, Any] = {"balancing": balancing, "config": config.__dict__, "loss": [], "loads": []}
    started = time.perf_counter()
    for step in range(config.steps):
        starts = torch.randint(0, data.numel() - config.seq_len - 1, (config.batch,), generator=generator)
        window = torch.stack([data[s : s + config.seq_len + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        (loss + model.auxiliary_loss()).backward()
        optimizer.step()
        loads = [moe.last_assignment.expert_load.tolist() for moe in model.moe]
        if balancing == "bias":
            for moe in model.moe:
                moe.router.update_bias(moe.last_assignment.expert_load)
        log["loss"].append(float(loss.detach()))
        log["loads"].append(loads)
        if on_step:
            on_step(step + 1)
    log["seconds"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: list[RouterScores] = []
    with torch.no_grad():
        model(window[:, :-1], scores)
    log["trace"] = str(save_trace(out_dir / f"trace-{balancing}.npz", scores))
    (out_dir / f"log-{balancing}.json").write_text(json.dumps(log))
    return log


def imbalance_curve(log: dict[str, Any]) -> np.ndarray:
    """Max / mean expert load per step, averaged over layers."""
    loads = np.array(log["loads"], dtype=float)  # [steps, layers, experts]
    return (loads.max(axis=2) / np.maximum(loads.mean(axis=2), 1e-9)).mean(axis=1)


def busiest_share_curve(log: dict[str, Any], count: int = 2) -> np.ndarray:
    """Share of all routed tokens that the `count` busiest experts carry, per step, averaged over layers."""
    loads = np.array(log["loads"], dtype=float)  # [steps, layers, experts]
    busiest = np.sort(loads, axis=2)[:, :, ::-1][:, :, :count].sum(axis=2)
    return (busiest / np.maximum(loads.sum(axis=2), 1e-9)).mean(axis=1)


def plot_balance(logs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib  # heavy: loaded only where a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4), dpi=110)
    smooth = np.ones(20) / 20
    for log in logs:
        left.plot(imbalance_curve(log), label=log["balancing"])
        middle.plot(np.convolve(busiest_share_curve(log), smooth, mode="valid"), label=log["balancing"])
        right.plot(np.convolve(log["loss"], np.ones(10) / 10, mode="valid"), label=log["balancing"])
    experts = np.array(logs[0]["loads"]).shape[2] if logs else 1
    left.set_xlabel("training step")
    left.set_ylabel("max / mean expert load")
    left.set_title("Expert load balance (mean over layers)")
    left.axhline(1.0, color="grey", linestyle=":")
    middle.set_xlabel("training step")
    middle.set_ylabel("share of routed tokens (20-step mean)")
    middle.set_title("Tokens on the 2 busiest experts")
    middle.axhline(2 / experts, color="grey", linestyle=":", label=f"even ({2 / experts:.0%})")
    right.set_xlabel("training step")
    right.set_ylabel("language-model loss (nats/byte, 10-step mean)")
    right.set_title("Training loss")
    for axes in (left, middle, right):
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
