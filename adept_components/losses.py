"""Next-token loss: the label shift and the held-out loss of the canary and the evaluation.

Labels follow torchtune's convention: ``labels`` is as long as ``tokens`` and holds the id a
position *is* (or ``CROSS_ENTROPY_IGNORE_IDX``); the logits at position ``t`` predict
``labels[t + 1]``. ``shift_labels`` turns that into the target of every position, once, for the
training step, the forgetting canary (spec "Paper's setups and results"), the evaluation and the
S1.2/S2.2 probe. A held-out loss is a token mean: the sum of the losses of every supervised
token of every batch (and rank), divided by their number, never a mean of per-batch means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX
from torchtune.modules.loss import CEWithChunkedOutputLoss

from adept_components.distributed import global_means, rank_share
from adept_components.progress import progress_bar

# (model output: logits [b, s, v] or their chunks, targets [b, s]) -> token-mean loss (0-d)
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """The next-token target of every position: ``labels[:, 1:]`` then one ignored column.

    Args:
        labels (torch.Tensor): [b, s] labels in torchtune's convention (or the tokens
            themselves, for plain text).

    Returns:
        torch.Tensor: [b, s], ``targets[:, t] = labels[:, t + 1]``; the last position predicts
        nothing (``CROSS_ENTROPY_IGNORE_IDX``).
    """
    ignored = torch.full_like(labels[:, :1], CROSS_ENTROPY_IGNORE_IDX)  # [b, 1]
    return torch.cat([labels[:, 1:], ignored], dim=1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside (no dropout); every submodule's own train/eval flag restored after.

    Args:
        model (nn.Module): the model to measure.

    Yields:
        None
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def heldout_loss(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn | None = None,
    group: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
    progress_desc: str | None = None,
    show_progress: bool = False,
) -> float:
    """Token-mean next-token loss of the full model forward over held-out batches.

    ``model(tokens)`` is called as in training, so a model that is FSDP-sharded, wrapped by
    activation checkpointing or returns chunked logits (``set_num_output_chunks``) is measured
    as it trains. Each batch's mean from ``loss_fn`` is weighted by its supervised tokens, so
    the result is the mean over every supervised token of every batch. Ranks split the batches
    (``batches[rank::world_size]``) and the sums are all-reduced: every rank of the group must
    make the call, and gets the one-process result.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder`` (possibly wrapped or sharded).
        batches (Sequence[tuple[torch.Tensor, torch.Tensor]]): ``(tokens, labels)`` pairs,
            each [b, s], from ``probe_batches``; the same list on every rank.
        loss_fn (LossFn | None): ``loss_fn(model(tokens), shift_labels(labels))``, a token mean
            over the supervised targets, e.g. the training recipe's loss. Default: torchtune's
            ``CEWithChunkedOutputLoss`` over the model's output chunks (one, unchunked).
        group (dist.ProcessGroup | None): process group to share the batches over; default:
            the world when ``torch.distributed`` is initialised.
        device (torch.device | None): where the batches go; default: the model's parameters'.
        progress_desc (str | None): progress bar label. Default: ``"held-out loss (batch)"``.
        show_progress (bool): show a bar of this rank's batches (rank 0 of a run).

    Returns:
        float: the loss in nats per supervised token.

    Raises:
        ValueError: no batches.
    """
    if len(batches) == 0:
        raise ValueError(
            "the held-out set has no batches: build them with probe_batches(data, ...)"
        )
    loss_fn = loss_fn or _chunked_cross_entropy
    device = device if device is not None else next(model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, tokens]
    mine = rank_share(batches, group)
    bar = progress_bar(len(mine), progress_desc or "held-out loss (batch)", show_progress)
    with eval_mode(model), torch.no_grad(), bar:
        for tokens, labels in mine:
            bar.update()
            targets = shift_labels(labels.to(device))  # [b, s]
            count = (targets != CROSS_ENTROPY_IGNORE_IDX).sum()
            loss = loss_fn(model(tokens.to(device)), targets)
            totals += torch.stack([loss.double() * count, count.double()])
    return global_means(totals, group)[0][0]


def _chunked_cross_entropy(
    output: torch.Tensor | list[torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """``CEWithChunkedOutputLoss`` for whatever the model returns: logits or their chunks."""
    chunks = output if isinstance(output, list) else [output]  # each [b, s_chunk, v]
    return CEWithChunkedOutputLoss(num_output_chunks=len(chunks))(chunks, targets)
