"""The order in which training visits the domain corpus: a seeded permutation per epoch."""

from __future__ import annotations

import torch


def epoch_order(num_chunks: int, seed: int, epoch: int) -> list[int]:
    """The chunk indices of epoch ``epoch``, in the order training reads them.

    A pure function of ``(seed, epoch)``: resume needs only the step, and every rank (and a
    benchmark that replays the data, e.g. for a torchtune baseline) computes the same order.

    Args:
        num_chunks (int): chunks in the corpus.
        seed (int): the run's seed.
        epoch (int): 0-based pass over the corpus.

    Returns:
        list[int]: a permutation of ``range(num_chunks)``.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_chunks, generator=generator).tolist()
