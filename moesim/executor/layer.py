"""A real MoE layer in torch, driven by the same routers as the simulator.

`MoELayer.forward(x)` routes the tokens with a `moesim.routing` router, permutes them by
expert, sends them to the ranks that hold their experts (expert parallelism over
`torch.distributed`, when a process group is given), runs the local experts on their
tokens, sends the results back and sums them with the router weights; shared experts run
on every token. Dropped slots contribute nothing (the caller's residual connection
carries the token), exactly as the router's `Assignment` says. Every phase is timed with
Megatron-Core's names.

How it runs on a GPU, as production MoE layers do (Megatron-Core's `GroupedMLP` behind
its all-to-all dispatcher):
* in the layer's dtype (bf16 by default on GPUs, from the scenario's precision);
* the experts as one grouped GEMM per projection (`torch._grouped_mm`, CUTLASS on
  Hopper), a function of every expert's rows together; the per-expert loop is the
  fallback (and the CPU's kernel, which is as fast there);
* permutation and un-permutation on the device without waiting for it: slots are sorted
  by expert with a fixed number of rows known on the host (tokens x slots, or experts x
  capacity when a capacity bounds them); rows that carry no token (dropped or empty
  slots) sort last and read and write a spare row. Only the split sizes an all-to-all
  needs cross to the host, so one GPU runs the whole layer without a host synchronisation.
The backward pass runs through the same kernels (autograd).

Weights are drawn per expert from the layer's seed, on the layer's device, so a layer
split over N ranks computes the same function as the layer in one process, and a big
layer is initialised on the GPU at GPU speed.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moesim.executor.dispatch import ExpertParallel
from moesim.executor.timing import PhaseClock
from moesim.models.spec import GATED_ACTIVATIONS
from moesim.routing.assignment import Assignment
from moesim.routing.router import Router

PHASES = ("router", "permute", "dispatch", "experts", "combine", "unpermute", "shared_experts")
EXPERT_KERNELS = ("auto", "grouped", "loop")


def activate(hidden: torch.Tensor, activation: str, inner: int) -> torch.Tensor:
    """The FFN nonlinearity: gated (SwiGLU / GeGLU halves) or plain (GELU, ReLU, SiLU)."""
    if activation == "swiglu":
        return F.silu(hidden[..., :inner]) * hidden[..., inner:]
    if activation == "geglu":
        return F.gelu(hidden[..., :inner]) * hidden[..., inner:]
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[activation](hidden)


def grouped_mm_available(device: torch.device) -> bool:
    """Whether this torch runs `torch._grouped_mm` on `device` (CUDA only: on the CPU the loop is the kernel)."""
    return device.type == "cuda" and hasattr(torch, "_grouped_mm")


def draw(
    seed: int, tag: str, index: int, shape: tuple[int, ...], scale: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Normal weights scaled by `scale`, from a generator on `device` seeded by (seed, tag, index)."""
    mixed = int(np.random.SeedSequence([seed, zlib.crc32(tag.encode()), index]).generate_state(1)[0])
    generator = torch.Generator(device=device).manual_seed(mixed)
    return (torch.randn(shape, generator=generator, device=device) * scale).to(dtype)


class Permutation(NamedTuple):
    """Slots in expert order: each row's token and weight, tokens per expert, the gathered rows.

    The rows are a number known on the host; when some may carry no token (`padded`:
    dropped or empty slots, sorted last), those point at a spare row past the last token
    and have weight 0.
    """

    token_of: torch.Tensor
    weight_of: torch.Tensor
    expert_counts: torch.Tensor
    tokens: torch.Tensor
    padded: bool


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
        device: Optional[torch.device | str] = None,
        shared_ffn_size: Optional[int] = None,
        experts_kernel: str = "auto",
    ) -> None:
        super().__init__()
        if experts_kernel not in EXPERT_KERNELS:
            raise ValueError(f"experts_kernel must be one of {', '.join(EXPERT_KERNELS)}, got {experts_kernel!r}")
        self.hidden_size, self.ffn_size, self.num_experts = hidden_size, ffn_size, num_experts
        self.router, self.activation = router, activation
        self.parallel = parallel or ExpertParallel.single()
        if num_experts % self.parallel.world_size:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the {self.parallel.world_size} ranks")
        target = torch.device(device) if device is not None else self.parallel.device
        self.local_experts = num_experts // self.parallel.world_size
        first = self.parallel.rank * self.local_experts
        width = 2 * ffn_size if activation in GATED_ACTIVATIONS else ffn_size
        scale_in, scale_out = hidden_size**-0.5, ffn_size**-0.5
        self.router_weight = nn.Parameter(draw(seed, "router", 0, (num_experts, hidden_size), scale_in, target, dtype))
        self.expert_up = nn.Parameter(
            torch.stack(
                [
                    draw(seed, "up", expert, (hidden_size, width), scale_in, target, dtype)
                    for expert in range(first, first + self.local_experts)
                ]
            )
        )  # [local experts, hidden, width]: a row-major operand of the grouped GEMM
        self.expert_down = nn.Parameter(
            torch.stack(
                [
                    draw(seed, "down", expert, (ffn_size, hidden_size), scale_out, target, dtype)
                    for expert in range(first, first + self.local_experts)
                ]
            )
        )
        self.shared_up: Optional[nn.Parameter] = None
        self.shared_down: Optional[nn.Parameter] = None
        if num_shared_experts:
            shared_ffn = shared_ffn_size or ffn_size * num_shared_experts
            shared_width = 2 * shared_ffn if activation in GATED_ACTIVATIONS else shared_ffn
            self.shared_up = nn.Parameter(
                draw(seed, "shared_up", 0, (hidden_size, shared_width), scale_in, target, dtype)
            )
            self.shared_down = nn.Parameter(
                draw(seed, "shared_down", 0, (shared_ffn, hidden_size), shared_ffn**-0.5, target, dtype)
            )
        if experts_kernel == "auto":
            experts_kernel = "grouped" if grouped_mm_available(target) else "loop"
        self.experts_kernel = experts_kernel
        self.clock = PhaseClock(target)
        self.last_assignment: Optional[Assignment] = None
        self.last_logits: Optional[torch.Tensor] = None
        self.last_local_counts: Optional[torch.Tensor] = None  # rows each local expert received in the last forward

    @property
    def last_local_load(self) -> list[int]:
        """Rows each local expert received in the last forward (reads the device)."""
        return [] if self.last_local_counts is None else [int(v) for v in self.last_local_counts.tolist()]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase (see `PhaseClock`); under PyTorch's profiler, also a range named `moe.<phase>` (how
        `moesim.validation.kernel_counts` counts each phase's kernels)."""
        if torch.autograd.profiler._is_profiler_enabled:
            with torch.profiler.record_function(f"moe.{name}"), self.clock.phase(name):
                yield
        else:
            with self.clock.phase(name):
                yield

    # ------------------------------------------------------------------ phases
    def route(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> Assignment:
        """The router phase: scores, then the rule's assignment (kept with its logits for auxiliary losses)."""
        logits = x @ self.router_weight.t()
        assignment = self.router.route(logits, token_ids)
        self.last_assignment = assignment
        self.last_logits = logits  # kept (with its graph) for auxiliary router losses
        return assignment

    def rows_for(self, assignment: Assignment) -> tuple[int, bool]:
        """(rows the permutation carries, whether some of them may carry no token), from host-known sizes only."""
        tokens, slots = assignment.expert_ids.shape
        rows = tokens * slots
        if assignment.capacity is not None:
            rows = min(rows, self.num_experts * assignment.capacity)
        return rows, assignment.capacity is not None or type(self.router).leaves_empty_slots

    def permute(self, x: torch.Tensor, assignment: Assignment) -> Permutation:
        """The permute phase: slots sorted by expert (stable: token order within an expert), hidden vectors gathered."""
        slots = assignment.expert_ids.shape[1]
        flat = torch.where(assignment.served, assignment.expert_ids, self.num_experts).reshape(-1)
        rows, may_be_empty = self.rows_for(assignment)
        order = torch.argsort(flat, stable=True)[:rows]
        counts = torch.zeros(self.num_experts + 1, dtype=torch.long, device=x.device)
        counts = counts.scatter_add_(0, flat, torch.ones_like(flat))[: self.num_experts]
        token_of = torch.div(order, slots, rounding_mode="floor")
        weight_of = assignment.weights.reshape(-1)[order].to(x.dtype)
        if not may_be_empty:
            return Permutation(token_of, weight_of, counts, x[token_of], False)
        # rows without a token read, and later write, a spare zero row past the last token: the grouped GEMM
        # leaves their output unspecified, and neither it nor its gradient may reach a real token
        token_of = torch.where(flat[order] < self.num_experts, token_of, x.shape[0])
        spare = torch.cat([x, x.new_zeros(1, x.shape[1])])
        return Permutation(token_of, weight_of, counts, spare[token_of], True)

    def run_experts(self, tokens: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Local experts on rows sorted by local expert (`counts` rows each; rows past them are left unspecified)."""
        self.last_local_counts = counts
        if self.experts_kernel == "grouped":
            offsets = torch.cumsum(counts, 0).to(torch.int32)
            hidden = activate(torch._grouped_mm(tokens, self.expert_up, offs=offsets), self.activation, self.ffn_size)
            return torch._grouped_mm(hidden, self.expert_down, offs=offsets)
        sizes = [int(v) for v in counts.tolist()]  # the loop needs the sizes on the host
        rest = tokens.shape[0] - sum(sizes)
        outputs = []
        for expert, chunk in enumerate(torch.split(tokens, [*sizes, rest])):
            if expert == len(sizes):
                outputs.append(chunk.new_zeros(rest, self.hidden_size))
            elif chunk.shape[0]:
                outputs.append(
                    activate(chunk @ self.expert_up[expert], self.activation, self.ffn_size) @ self.expert_down[expert]
                )
        return torch.cat(outputs) if outputs else tokens.new_zeros(0, self.hidden_size)

    def experts_in_expert_order(
        self, received: torch.Tensor, local_expert: Optional[torch.Tensor], counts: torch.Tensor
    ) -> torch.Tensor:
        """The experts phase: rows from several ranks are sorted by local expert first, and put back after."""
        if local_expert is None:  # one rank: the permutation already sorted them
            return self.run_experts(received, counts)
        order = torch.argsort(local_expert, stable=True)
        result = self.run_experts(received[order], counts)
        unsorted = torch.empty_like(result)
        unsorted[order] = result
        return unsorted

    @staticmethod
    def unpermute(x: torch.Tensor, returned: torch.Tensor, permutation: Permutation) -> torch.Tensor:
        """The unpermute phase: each slot's expert output, weighted, summed back into its token's row."""
        weighted = returned * permutation.weight_of.unsqueeze(1)
        rows = x.shape[0] + (1 if permutation.padded else 0)  # the spare row takes what empty rows return
        return x.new_zeros(rows, x.shape[1]).index_add(0, permutation.token_of, weighted)[: x.shape[0]]

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MoE output for tokens x [tokens, hidden] (add it to the residual stream)."""
        with self.phase("router"):
            assignment = self.route(x, token_ids)
        with self.phase("permute"):
            permutation = self.permute(x, assignment)
        single = self.parallel.world_size == 1
        if single:
            received, local_expert, counts = permutation.tokens, None, permutation.expert_counts
        else:
            with self.phase("dispatch"):
                served = int(permutation.expert_counts.sum())  # the exchange needs its sizes on the host
                received, local_expert, recv_counts, send_counts = self.parallel.dispatch(
                    permutation.tokens[:served], permutation.expert_counts, self.local_experts
                )
                counts = torch.bincount(local_expert, minlength=self.local_experts)
        with self.phase("experts"):
            expert_out = self.experts_in_expert_order(received, local_expert, counts)
        if not single:
            with self.phase("combine"):
                returned = self.parallel.combine(expert_out, recv_counts, send_counts)
                padding = permutation.tokens.shape[0] - returned.shape[0]
                if padding:
                    returned = torch.cat([returned, returned.new_zeros(padding, returned.shape[1])])
        else:
            returned = expert_out
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
