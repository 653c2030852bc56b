"""Sharing a pass over a list of batches between ranks, and adding up what they measured.

The probe (S1.2, S2.2) and the held-out losses all work the same way under ``torchrun``: every
rank is given the *same* list of batches, takes ``batches[rank::world]``, accumulates float64
sums, and the sums are all-reduced once at the end, so every rank returns the one-process
result. Without a process group (one process) the same code runs with rank 0 of 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank and the size of ``group``.

    Args:
        group (dist.ProcessGroup | None): the process group; default: the world when
            ``torch.distributed`` is initialised, else a single process.

    Returns:
        tuple[int, int]: ``(rank, world_size)``; ``(0, 1)`` without a process group.
    """
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def rank_share(items: Sequence[T], group: dist.ProcessGroup | None = None) -> Sequence[T]:
    """This rank's share of ``items``: ``items[rank::world_size]``.

    Args:
        items (Sequence[T]): the same list on every rank (the probe or held-out batches).
        group (dist.ProcessGroup | None): as ``rank_and_world``.

    Returns:
        Sequence[T]: every ``world_size``-th item, starting at this rank's index.
    """
    rank, world = rank_and_world(group)
    return items[rank::world]


def all_reduce_sum(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``values`` over the ranks of ``group``, in place (nothing to do for one process).

    Args:
        values (torch.Tensor): this rank's sums.
        group (dist.ProcessGroup | None): as ``rank_and_world``.

    Returns:
        torch.Tensor: ``values``, now the sums over all ranks.
    """
    if rank_and_world(group)[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values


def global_means(
    totals: torch.Tensor, group: dist.ProcessGroup | None = None
) -> tuple[list[float], float]:
    """Means over all ranks from ``[sum_1, ..., sum_n, count]``: each sum over the total count.

    A token-weighted loss is ``[loss sum, tokens]``; a per-batch mean ``[sums ..., batches]``.
    Summing first and dividing once gives the mean over every token (or batch) of every rank,
    never a mean of per-rank means.

    Args:
        totals (torch.Tensor): [n + 1] float64, this rank's sums then its count; all-reduced
            in place.
        group (dist.ProcessGroup | None): as ``rank_and_world``.

    Returns:
        tuple[list[float], float]: the ``n`` means and the total count.
    """
    totals = all_reduce_sum(totals, group)
    return (totals[:-1] / totals[-1]).tolist(), totals[-1].item()


def broadcast_int(value: int, device: torch.device, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every rank (itself without a process group).

    The recipe keeps one random seed for all ranks with it: a seed each rank drew for itself
    would give each its own data order and, with ``method=random``, its own copies.

    Args:
        value (int): this rank's value (only ``src``'s is kept); must fit in int64.
        device (torch.device): where the collective's tensor lives (CUDA under NCCL).
        src (int): the rank whose value wins.

    Returns:
        int: ``src``'s value.
    """
    if rank_and_world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=src)
    return int(tensor.item())
