"""Next-token loss: the label shift and the held-out loss of the canary and the evaluation.

Labels follow torchtune's convention: ``labels`` is as long as ``tokens`` and holds the id a
position *is* (or ``CROSS_ENTROPY_IGNORE_IDX``); the logits at position ``t`` predict
``labels[t + 1]``. ``shift_labels`` turns that into the target of every position, once, for the
training step, the forgetting canary (spec "Paper's setups and results"), the evaluation and the
S1.2/S2.2 probe. A held-out loss is a token mean: the sum of the losses of every supervised
token of every batch (and rank), divided by their number, never a mean of per-batch means.

``output_loss_sum`` is the one cross-entropy over whatever a model returns: logits, their
chunks, or ``HiddenChunk`` s whose head the loss applies itself, a chunk at a time under
activation checkpointing (``ChunkedHeadCrossEntropy``), so that a large vocabulary's whole
logits never exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX

from adept_components.distributed import global_means, rank_share
from adept_components.models.decoder import HiddenChunk
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
            over the supervised targets, e.g. the training recipe's loss. Default: the mean of
            ``output_loss_sum`` over whatever the model returns.
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


def _head_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (upcast to fp32) over supervised targets."""
    logits = head(hidden).float()  # [b, s_chunk, v]
    return F.cross_entropy(
        logits.flatten(0, 1),
        targets.flatten(),
        ignore_index=CROSS_ENTROPY_IGNORE_IDX,
        reduction="sum",
    )


def output_loss_sum(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised targets of a model's output.

    Args:
        output (Any): logits [b, s, v], a list of sequence chunks of them, or a list of
            ``HiddenChunk`` s (a ``Decoder`` with ``defer_head``). A deferred chunk is
            projected inside ``torch.utils.checkpoint`` when gradients flow, so its logits
            are freed after the forward and recomputed in the backward.
        targets (torch.Tensor): [b, s] from ``shift_labels``.

    Returns:
        torch.Tensor: 0-d fp32 sum over positions whose target is not ignored.
    """
    chunks = output if isinstance(output, list) else [output]
    sums, start = [], 0
    for chunk in chunks:
        end = start + chunk.shape[1]
        part = targets[:, start:end]
        if not isinstance(chunk, HiddenChunk):
            sums.append(_head_cross_entropy_sum(chunk, part, lambda logits: logits))
        elif torch.is_grad_enabled() and chunk.hidden.requires_grad:
            sums.append(
                checkpoint(
                    _head_cross_entropy_sum, chunk.hidden, part, chunk.head, use_reentrant=False
                )
            )
        else:
            sums.append(_head_cross_entropy_sum(chunk.hidden, part, chunk.head))
        start = end
    return torch.stack(sums).sum()


class ChunkedHeadCrossEntropy:
    """Token-mean cross-entropy that computes the output head a chunk at a time.

    torchtune's ``CEWithChunkedOutputLoss`` upcasts logits chunk by chunk, but the model
    still computes every chunk's logits in its forward and autograd keeps them all for the
    backward. With this loss the recipe sets the model's ``defer_head`` (``Decoder``): the
    model returns the final hidden states in chunks and the loss projects each chunk under
    activation checkpointing, so at most one chunk's logits exist at a time. Decoders that
    cannot defer (torchtune's own builders) return logit chunks, which it takes as they are.

    Args:
        num_output_chunks (int): chunks along the sequence (8: 32 positions each at 256).

    Raises:
        ValueError: ``num_output_chunks`` is not a positive integer.
    """

    defers_head = True

    def __init__(self, num_output_chunks: int = 8) -> None:
        chunks = num_output_chunks
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"num_output_chunks={chunks!r} must be a positive integer")
        self.num_output_chunks = num_output_chunks

    def __call__(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean over supervised targets (0 when there are none).

        Args:
            output (Any): what the model returned (see ``output_loss_sum``).
            targets (torch.Tensor): [b, s] from ``shift_labels``.

        Returns:
            torch.Tensor: 0-d loss.
        """
        count = (targets != CROSS_ENTROPY_IGNORE_IDX).sum().clamp(min=1)
        return output_loss_sum(output, targets) / count


def _chunked_cross_entropy(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """The token-mean cross-entropy of whatever the model returns."""
    return ChunkedHeadCrossEntropy()(output, targets)
