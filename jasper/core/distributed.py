"""Gathering embeddings across data-parallel ranks, for losses that need the global batch.

Under DDP each rank holds ``B_r`` rows. :func:`all_gather_with_grad` returns the ``(sum_r B_r, d)`` global batch
(rank 0's rows first, then rank 1's, ...) on every rank; its backward sums the incoming gradient over ranks
(all-reduce) and hands each rank the slice for its own rows.

Gradient convention: every rank computes the same global loss ``L`` from the gathered batch, so the summed
gradient on rank r's rows is ``world_size * dL/d(rows_r)``. DDP then *averages* parameter gradients over ranks,
dividing by ``world_size`` again: the update equals that of one process running ``L`` on the whole batch. (Terms
computed on local rows only, such as a mean cosine loss, need no correction: DDP's average of per-rank means is
the global mean when ranks hold equal batches.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def data_parallel_world_size() -> int:
    """World size when ``torch.distributed`` is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_gather_with_grad(x: Tensor) -> Tensor:
    """``(B_r, ...)`` on each rank -> ``(sum_r B_r, ...)`` everywhere, differentiable (see module docstring).

    Ranks may hold different numbers of rows (the last batch of an epoch). Identity when not distributed.
    """
    if data_parallel_world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """As :func:`all_gather_with_grad`, for constants such as teacher vectors (no backward)."""
    if data_parallel_world_size() == 1:
        return x
    with torch.no_grad():
        return _gather(x.detach())[0]


def _gather(x: Tensor) -> tuple[Tensor, list[int]]:
    world = dist.get_world_size()
    size = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, lengths, strict=True)]), lengths


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        gathered, lengths = _gather(x)
        ctx.rank, ctx.lengths = dist.get_rank(), lengths
        return gathered

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss depends on every rank's rows
        start = sum(ctx.lengths[: ctx.rank])
        return grad[start : start + ctx.lengths[ctx.rank]]
