"""Expert-parallel token exchange over `torch.distributed`: counts first, then tokens, then back.

`all_to_all_single` with uneven split sizes carries the tokens (gloo on CPU, NCCL on
GPU); the autograd version is used so gradients flow back through the exchange. Before
the first exchange `ExpertParallel.probe` checks that the backend supports
`all_to_all_single`; where it does not, paired send/receive operations do the same
exchange. A rank that receives no tokens simply gets empty tensors.
"""

from __future__ import annotations

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

    def _exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        recv = torch.empty_like(send_counts)
        self._plain_exchange(recv, send_counts, [1] * self.world_size, [1] * self.world_size)
        return recv

    def _plain_exchange(self, out: torch.Tensor, data: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> None:
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
            from torch.distributed.nn.functional import all_to_all_single

            return all_to_all_single(out, data, out_splits, in_splits)
        return _SendReceive.apply(data, self, out_splits, in_splits)

    def dispatch(
        self, tokens: torch.Tensor, experts: torch.Tensor, send_counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Send each token to the rank of its expert; returns (tokens, expert ids, counts received per rank)."""
        if self.world_size == 1:
            return tokens, experts, send_counts
        recv_counts = self._exchange_counts(send_counts)
        out_splits, in_splits = recv_counts.tolist(), send_counts.tolist()
        received = self._differentiable_exchange(tokens, out_splits, in_splits)
        received_experts = experts.new_empty(sum(out_splits))
        self._plain_exchange(received_experts, experts, out_splits, in_splits)
        return received, received_experts, recv_counts

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
