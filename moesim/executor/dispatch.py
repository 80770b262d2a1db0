"""Expert-parallel token exchange over `torch.distributed`: counts first, then tokens, then back.

`all_to_all_single` with uneven split sizes carries the tokens (gloo on CPU, NCCL on
GPU); the autograd version is used so gradients flow back through the exchange. Before
the first exchange `ExpertParallel.probe` checks that the backend supports
`all_to_all_single`; where it does not, paired send/receive operations do the same
exchange. A rank that receives no tokens simply gets empty tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class ExpertParallel:
    """This rank's place in the expert-parallel group and how it exchanges tokens."""

    rank: int
    world_size: int
    device: torch.device
    use_alltoall: bool = True

    @classmethod
    def single(cls) -> "ExpertParallel":
        return cls(0, 1, torch.device("cpu"))

    @classmethod
    def from_process_group(cls, device: Optional[torch.device] = None) -> "ExpertParallel":
        parallel = cls(dist.get_rank(), dist.get_world_size(), device or torch.device("cpu"))
        parallel.use_alltoall = parallel.probe()
        return parallel

    def probe(self) -> bool:
        """Whether the backend runs all_to_all_single (else: paired send/receive)."""
        try:
            probe = torch.zeros(self.world_size, device=self.device)
            dist.all_to_all_single(torch.empty_like(probe), probe)
            return True
        except (RuntimeError, NotImplementedError):
            return False

    def _plain_exchange(
        self, out: torch.Tensor, data: torch.Tensor, out_splits: list[int], in_splits: list[int]
    ) -> None:
        if self.use_alltoall:
            dist.all_to_all_single(out, data, out_splits, in_splits)
            return
        sends, offset = [], 0
        for peer, size in enumerate(in_splits):
            piece = data[offset : offset + size]
            offset += size
            if peer == self.rank:
                start = sum(out_splits[:peer])
                out[start : start + out_splits[peer]] = piece
            elif size:
                sends.append(dist.P2POp(dist.isend, piece.contiguous(), peer))
        start = 0
        for peer, size in enumerate(out_splits):
            if peer != self.rank and size:
                sends.append(dist.P2POp(dist.irecv, out[start : start + size], peer))
            start += size
        for request in dist.batch_isend_irecv(sends) if sends else []:
            request.wait()

    def _differentiable_exchange(self, data: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        out = data.new_empty((sum(out_splits), *data.shape[1:]))
        if self.use_alltoall:
            # multi-rank runs only; not every torch build has torch.distributed.nn
            from torch.distributed.nn.functional import all_to_all_single

            with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd op
                warnings.simplefilter("ignore", FutureWarning)
                return all_to_all_single(out, data, out_splits, in_splits)
        return _SendReceive.apply(data, self, out_splits, in_splits)

    def dispatch(
        self, tokens: torch.Tensor, expert_counts: torch.Tensor, local_experts: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Send expert-sorted tokens to the ranks of their experts.

        First the token count per expert goes to the expert's rank (Megatron-Core's
        `tokens_per_expert` exchange), then the tokens. Returns (tokens received, the local
        expert of each, tokens received from each rank, tokens sent to each rank).
        """
        send_counts = expert_counts.view(self.world_size, local_experts).sum(dim=1)
        if self.world_size == 1:
            local = torch.repeat_interleave(torch.arange(local_experts, device=tokens.device), expert_counts)
            return tokens, local, send_counts, send_counts
        received_counts = torch.empty_like(expert_counts)
        self._plain_exchange(
            received_counts, expert_counts, [local_experts] * self.world_size, [local_experts] * self.world_size
        )
        per_source = received_counts.view(self.world_size, local_experts)
        recv_counts = per_source.sum(dim=1)
        received = self._differentiable_exchange(tokens, recv_counts.tolist(), send_counts.tolist())
        local = torch.repeat_interleave(
            torch.arange(local_experts, device=tokens.device).repeat(self.world_size), per_source.reshape(-1)
        )
        return received, local, recv_counts, send_counts

    def combine(self, outputs: torch.Tensor, recv_counts: torch.Tensor, send_counts: torch.Tensor) -> torch.Tensor:
        """Send expert outputs back to the ranks their tokens came from."""
        if self.world_size == 1:
            return outputs
        return self._differentiable_exchange(outputs, send_counts.tolist(), recv_counts.tolist())


class _SendReceive(torch.autograd.Function):
    """Paired send/receive exchange with its gradient (the reverse exchange)."""

    @staticmethod
    def forward(ctx, data, parallel, out_splits, in_splits):  # type: ignore[no-untyped-def]
        ctx.parallel, ctx.out_splits, ctx.in_splits = parallel, out_splits, in_splits
        out = data.new_empty((sum(out_splits), *data.shape[1:]))
        parallel._plain_exchange(out, data.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        back = grad.new_empty((sum(ctx.in_splits), *grad.shape[1:]))
        ctx.parallel._plain_exchange(back, grad.contiguous(), ctx.in_splits, ctx.out_splits)
        return back, None, None, None
