"""A real MoE layer in torch, driven by the same routers as the simulator.

`MoELayer.forward(x)` routes the tokens with a `moesim.routing` router, permutes them by
expert, sends them to the ranks that hold their experts (expert parallelism over
`torch.distributed`, when a process group is given), runs each local expert on its
tokens (a loop over experts, never over tokens), sends the results back and sums them
with the router weights; shared experts run on every token. Dropped slots contribute
nothing (the caller's residual connection carries the token), exactly as the router's
`Assignment` says. Every phase is timed with Megatron-Core's names.

Weights are drawn from one seed for the whole model and each rank keeps its slice, so a
layer split over N ranks computes the same function as the layer in one process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from moesim.executor.dispatch import ExpertParallel
from moesim.models.spec import GATED_ACTIVATIONS
from moesim.routing.assignment import Assignment
from moesim.routing.router import Router

PHASES = ("router", "permute", "dispatch", "experts", "combine", "unpermute", "shared_experts")


def activate(hidden: torch.Tensor, activation: str, inner: int) -> torch.Tensor:
    """The FFN nonlinearity: gated (SwiGLU / GeGLU halves) or plain (GELU, ReLU, SiLU)."""
    if activation == "swiglu":
        return F.silu(hidden[..., :inner]) * hidden[..., inner:]
    if activation == "geglu":
        return F.gelu(hidden[..., :inner]) * hidden[..., inner:]
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[activation](hidden)


class Permutation(NamedTuple):
    """Served slots in expert order: each slot's token and router weight, tokens per expert, gathered rows."""

    token_of: torch.Tensor
    weight_of: torch.Tensor
    expert_counts: torch.Tensor
    tokens: torch.Tensor


class MoELayer(nn.Module):
    """Routed experts (optionally expert-parallel) plus shared experts."""

    def __init__(
        self,
        hidden_size: int,
        ffn_size: int,
        num_experts: int,
        router: Router,
        activation: str = "swiglu",
        num_shared_experts: int = 0,
        parallel: Optional[ExpertParallel] = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.hidden_size, self.ffn_size, self.num_experts = hidden_size, ffn_size, num_experts
        self.router, self.activation = router, activation
        self.parallel = parallel or ExpertParallel.single()
        if num_experts % self.parallel.world_size:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the {self.parallel.world_size} ranks")
        self.local_experts = num_experts // self.parallel.world_size
        first = self.parallel.rank * self.local_experts
        generator = torch.Generator().manual_seed(seed)
        width = 2 * ffn_size if activation in GATED_ACTIVATIONS else ffn_size
        scale_in, scale_out = hidden_size**-0.5, ffn_size**-0.5
        gate = torch.randn(num_experts, hidden_size, generator=generator) * scale_in
        up = torch.randn(num_experts, hidden_size, width, generator=generator) * scale_in
        down = torch.randn(num_experts, ffn_size, hidden_size, generator=generator) * scale_out
        self.router_weight = nn.Parameter(gate.to(dtype))
        self.expert_up = nn.Parameter(up[first : first + self.local_experts].to(dtype).contiguous())
        self.expert_down = nn.Parameter(down[first : first + self.local_experts].to(dtype).contiguous())
        self.shared_up: Optional[nn.Parameter] = None
        self.shared_down: Optional[nn.Parameter] = None
        if num_shared_experts:
            shared_ffn = ffn_size * num_shared_experts
            shared_width = 2 * shared_ffn if activation in GATED_ACTIVATIONS else shared_ffn
            self.shared_up = nn.Parameter((torch.randn(hidden_size, shared_width, generator=generator) * scale_in).to(dtype))
            self.shared_down = nn.Parameter(
                (torch.randn(shared_ffn, hidden_size, generator=generator) * shared_ffn**-0.5).to(dtype)
            )
        self.timings: dict[str, float] = {}
        self.last_assignment: Optional[Assignment] = None
        self.last_logits: Optional[torch.Tensor] = None
        self.last_local_load: list[int] = []  # rows each local expert received in the last forward
        self.synchronize = torch.cuda.synchronize if torch.cuda.is_available() and parallel and parallel.device.type == "cuda" else None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase (waiting for the device first, so the time is the phase's own)."""
        if self.synchronize:
            self.synchronize()
        started = time.perf_counter()
        yield
        if self.synchronize:
            self.synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def run_experts(self, tokens: torch.Tensor, local_expert: torch.Tensor) -> torch.Tensor:
        """Each local expert on its tokens: sort by expert, one matmul pair per expert (a loop over experts)."""
        order = torch.argsort(local_expert, stable=True)
        counts = torch.bincount(local_expert, minlength=self.local_experts).tolist()
        self.last_local_load = counts
        outputs = []
        for expert, chunk in enumerate(torch.split(tokens[order], counts)):
            if chunk.shape[0] == 0:
                continue
            hidden = activate(chunk @ self.expert_up[expert], self.activation, self.ffn_size)
            outputs.append(hidden @ self.expert_down[expert])
        result = torch.cat(outputs) if outputs else tokens.new_zeros(0, self.hidden_size)
        unsorted = torch.empty_like(result)
        unsorted[order] = result
        return unsorted

    def route(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> Assignment:
        """The router phase: scores, then the rule's assignment (kept with its logits for auxiliary losses)."""
        logits = x @ self.router_weight.t()
        assignment = self.router.route(logits, token_ids)
        self.last_assignment = assignment
        self.last_logits = logits  # kept (with its graph) for auxiliary router losses
        return assignment

    def permute(self, x: torch.Tensor, assignment: Assignment) -> Permutation:
        """The permute phase: served slots sorted by expert, with their tokens' hidden vectors gathered."""
        served = assignment.served
        slots_token = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(assignment.expert_ids)[served]
        slots_expert = assignment.expert_ids[served]
        slots_weight = assignment.weights[served].to(x.dtype)
        order = torch.argsort(slots_expert, stable=True)
        token_of, expert_of = slots_token[order], slots_expert[order]
        return Permutation(token_of, slots_weight[order], torch.bincount(expert_of, minlength=self.num_experts), x[token_of])

    @staticmethod
    def unpermute(x: torch.Tensor, returned: torch.Tensor, permutation: Permutation) -> torch.Tensor:
        """The unpermute phase: each slot's expert output, weighted, summed back into its token's row."""
        return torch.zeros_like(x).index_add(0, permutation.token_of, returned * permutation.weight_of.unsqueeze(1))

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MoE output for tokens x [tokens, hidden] (add it to the residual stream)."""
        with self.phase("router"):
            assignment = self.route(x, token_ids)
        with self.phase("permute"):
            permutation = self.permute(x, assignment)
        with self.phase("dispatch"):
            received, local_expert, recv_counts, send_counts = self.parallel.dispatch(
                permutation.tokens, permutation.expert_counts, self.local_experts
            )
        with self.phase("experts"):
            expert_out = self.run_experts(received, local_expert)
        with self.phase("combine"):
            returned = self.parallel.combine(expert_out, recv_counts, send_counts)
        with self.phase("unpermute"):
            out = self.unpermute(x, returned, permutation)
        if self.shared_up is not None and self.shared_down is not None:
            with self.phase("shared_experts"):
                shared_ffn = self.shared_down.shape[0]
                out = out + activate(x @ self.shared_up, self.activation, shared_ffn) @ self.shared_down
        return out


def reference_moe(layer: MoELayer, x: torch.Tensor, assignment: Assignment) -> torch.Tensor:
    """The slow reference (single process): for every expert, its tokens, one at a time through the dense math."""
    out = torch.zeros_like(x)
    for expert in range(layer.num_experts):
        rows, slots = (assignment.expert_ids == expert).nonzero(as_tuple=True)
        for row, slot in zip(rows.tolist(), slots.tolist()):
            hidden = activate(x[row] @ layer.expert_up[expert], layer.activation, layer.ffn_size)
            out[row] += assignment.weights[row, slot] * (hidden @ layer.expert_down[expert])
    if layer.shared_up is not None and layer.shared_down is not None:
        out += activate(x @ layer.shared_up, layer.activation, layer.shared_down.shape[0]) @ layer.shared_down
    return out
