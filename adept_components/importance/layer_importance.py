"""S1.2 layer importance, S1.3 layer selection and the probe side of S2.2 unit importance.

All scores are measured on probe batches (``adept_components.data.probe_batches``): pairs of
``tokens`` and ``labels`` [b, s] in torchtune's convention (the logits at ``t`` predict
``labels[t + 1]``; ``CROSS_ENTROPY_IGNORE_IDX`` never counts, so pads and instruction prompts
are masked). Losses are token-weighted means over every supervised token of the probe, never
means of per-batch means. Every score follows one convention: **higher = more critical for
general competence**, so the layers to expand are the ones with the *lowest* scores.

Methods (spec S1.2):

- ``"mask-out"`` (default): ``I(l) = L̂(l) − L_base``, the probe loss with layer ``l`` skipped
  minus the full model's. Skipping a layer changes nothing below it, so the hidden state
  entering every layer is computed once per batch and each skip resumes from it: ``L`` layer
  forwards for the base pass plus ``L(L−1)/2`` for the skips, instead of ``L(L+1)`` for ``L+1``
  full forwards.
- ``"grad-cumulative"``: per tensor ``Σ|g ⊙ θ|`` averaged over batches, summed over the
  layer, divided by the largest layer sum.
- ``"rank"``: for each unit type, rank the layers by their S2.2 unit score; ``I = 1 −
  mean(rank / L)`` with rank 1 for the highest score.
- ``"interference"`` (not in the spec): the general-loss increase per nat of domain gain that
  a trained copy of the layer is predicted to cause (``importance.interference``); it also
  needs domain batches, so ``profile_layers`` computes it, not ``layer_importance``.

Distributed: when ``torch.distributed`` is initialised (or a ``group`` is passed) every rank
is given the *same* list of batches, processes ``batches[rank::world]``, and the sums (loss ×
tokens, token counts, unit sums) are all-reduced, so every rank returns the one-process
result. Every rank of the group must make the call (it ends in a collective). The model must
be whole on every rank (not FSDP-sharded): the probe runs before sharding (stage 1) or on a
gathered copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX

from adept_components.distributed import global_means, rank_share
from adept_components.importance.snr import module_snr, snr_layer_scores
from adept_components.losses import eval_mode, shift_labels
from adept_components.progress import progress_bar

Batch = tuple[torch.Tensor, torch.Tensor]
ImportanceMethod = Literal["mask-out", "grad-cumulative", "rank", "snr", "interference"]
IMPORTANCE_METHODS: tuple[str, ...] = ("mask-out", "grad-cumulative", "rank", "snr", "interference")
# Supervised tokens per output-projection call: bounds the [n, vocab] logits (Qwen3's 151k
# vocab: 1024 tokens -> 0.6 GB in fp32) without changing any result.
_LOGIT_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class MaskOutLosses:
    """Probe losses of the full model and of the model with each layer skipped.

    Attributes:
        base_loss (float): ``L_base``, mean token cross-entropy of the full model.
        skipped_losses (list[float]): ``L̂(l)`` for every layer ``l``.
        num_tokens (int): supervised tokens the means are over.
    """

    base_loss: float
    skipped_losses: list[float]
    num_tokens: int

    @property
    def importance(self) -> list[float]:
        """``I(l) = L̂(l) − L_base`` per layer (higher = more critical)."""
        return [loss - self.base_loss for loss in self.skipped_losses]


class GradientImportance(NamedTuple):
    """Gradient-based scores: unpacks as ``(layer_scores, unit_scores)``.

    Attributes:
        layer_scores (list[float]): S1.2 grad-cumulative score per layer, in [0, 1] (the
            largest layer is 1).
        unit_scores (dict[int, dict[str, float]]): S2.2 score per layer index and parameter
            name inside the layer (e.g. ``"attn.q_proj.weight"``): the mean over the tensor's
            elements of ``|θ| · mean_b |g_b|``.
    """

    layer_scores: list[float]
    unit_scores: dict[int, dict[str, float]]


def probe_loss(
    model: nn.Module, batches: Sequence[Batch], group: dist.ProcessGroup | None = None
) -> float:
    """Mean token cross-entropy of ``model`` over the probe (``L_base`` of spec S1.2).

    Token-weighted over all supervised tokens of all batches; eval mode, inference mode (no
    autograd bookkeeping at all).

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s].
        group (dist.ProcessGroup | None): process group to share the batches over; default:
            the world when ``torch.distributed`` is initialised.

    Returns:
        float: the loss in nats per token.

    Raises:
        ValueError: no batches, malformed batches, a sequence longer than the model's RoPE
            cache, or no supervised token in the whole probe.
    """
    _check_probe(model, batches)
    device = _device(model)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, tokens]
    with eval_mode(model), torch.inference_mode():
        for tokens, labels in rank_share(batches, group):
            tokens, labels = tokens.to(device), labels.to(device)
            h = model.tok_embeddings(tokens)  # [b, s, d]
            for layer in model.layers:
                h = layer(h)
            loss_sum, count = _loss_sum(model, h, labels)
            totals[0] += loss_sum
            totals[1] += count
    return global_means(totals, group)[0][0]


def mask_out_losses(
    model: nn.Module,
    batches: Sequence[Batch],
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> MaskOutLosses:
    """Probe loss of the full model and with each layer skipped, from cached layer inputs.

    Skipping layer ``l`` removes its residual contribution: the hidden state entering ``l``
    goes straight to layer ``l+1``. For bias-free pre-norm Llama/Qwen3 blocks this equals
    zeroing all of the layer's weights. Per batch, the inputs of all layers are computed once
    (``L`` layer forwards) and kept; skip ``l`` then runs layers ``l+1 .. L−1`` from the
    cached input of ``l`` (``L−1−l`` forwards). Only one batch's cache (``L+1`` hidden states
    of [b, s, d]) is alive at a time.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s].
        group (dist.ProcessGroup | None): process group to share the batches over; default:
            the world when ``torch.distributed`` is initialised.
        progress (bool): show a bar of this rank's batches x (1 + skipped layers).

    Returns:
        MaskOutLosses: base loss, per-layer skipped losses, token count.

    Raises:
        ValueError: as ``probe_loss``.
    """
    _check_probe(model, batches)
    device = _device(model)
    num_layers = len(model.layers)
    # [L̂(0) .. L̂(L−1), L_base] loss sums, then the token count.
    totals = torch.zeros(num_layers + 2, dtype=torch.float64, device=device)
    mine = rank_share(batches, group)
    bar = progress_bar(len(mine) * (num_layers + 1), "probe mask-out (batch x layer)", progress)
    with eval_mode(model), torch.inference_mode(), bar:
        for tokens, labels in mine:
            tokens, labels = tokens.to(device), labels.to(device)
            inputs = [model.tok_embeddings(tokens)]  # inputs[l]: [b, s, d] entering layer l
            for layer in model.layers:
                inputs.append(layer(inputs[-1]))
            base_sum, count = _loss_sum(model, inputs[num_layers], labels)
            totals[num_layers] += base_sum
            totals[num_layers + 1] += count
            bar.update()
            for skipped in range(num_layers):
                h = inputs[skipped]
                for layer in model.layers[skipped + 1 :]:
                    h = layer(h)
                totals[skipped] += _loss_sum(model, h, labels)[0]
                bar.update()
            del inputs
    losses, num_tokens = global_means(totals, group)
    return MaskOutLosses(
        base_loss=losses[-1], skipped_losses=losses[:-1], num_tokens=int(num_tokens)
    )


def mask_out_importance(
    model: nn.Module, batches: Sequence[Batch], group: dist.ProcessGroup | None = None
) -> list[float]:
    """Mask-out layer importance ``I(l) = L̂(l) − L_base`` (spec S1.2, the default method).

    See ``mask_out_losses`` for how the skipped losses are computed.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s].
        group (dist.ProcessGroup | None): process group to share the batches over.

    Returns:
        list[float]: one score per layer; higher = more critical.

    Raises:
        ValueError: as ``probe_loss``.
    """
    return mask_out_losses(model, batches, group).importance


def grad_cumulative_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> GradientImportance:
    """Gradient × weight scores of layers (S1.2 grad-cumulative) and units (S2.2).

    For each batch ``b`` the gradient ``g_b`` of the batch's mean token loss is taken with
    respect to every parameter of ``model.layers``. With ``B`` batches, per tensor ``T``:
    ``S_T = Σ_elements |θ| · (1/B) Σ_b |g_b|``, which equals ``Σ|g ⊙ θ|`` averaged over
    batches (absolute values, as all reference code; spec "Reference code bugs"). Layer score
    = ``Σ_T S_T`` over the layer, divided by the largest layer's. Unit score (S2.2) =
    ``S_T / numel(T)``, a mean, so large tensors are not favoured. Only per-tensor scalars
    are accumulated: no parameter-sized buffer is allocated.

    Gradients come from ``torch.autograd.grad``, so nothing is accumulated into ``.grad``;
    as spec S2.2 requires, every parameter's ``.grad`` is also cleared (set to None) before
    and after, so no probe gradient can reach an optimizer step. Frozen parameters are made
    to require grad for the pass; all ``requires_grad`` flags and module train/eval modes are
    restored afterwards, even on error.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s]; batches with no
            supervised token are skipped and do not count in ``B``.
        group (dist.ProcessGroup | None): process group to share the batches over.
        progress (bool): show a bar of this rank's batches.

    Returns:
        GradientImportance: ``(layer_scores, unit_scores)``.

    Raises:
        ValueError: as ``probe_loss``, or the model's parameters are FSDP-sharded.
    """
    _check_probe(model, batches)
    device = _device(model)
    units = [
        (index, name, param)
        for index, layer in enumerate(model.layers)
        for name, param in layer.named_parameters()
    ]
    params = [param for _, _, param in units]
    # [S_T sums over this rank's batches ..., batches counted]
    totals = torch.zeros(len(units) + 1, dtype=torch.float64, device=device)
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        _clear_grads(model)
        for param in params:
            param.requires_grad_(True)
        mine = rank_share(batches, group)
        bar = progress_bar(len(mine), "probe gradients (batch)", progress)
        with eval_mode(model), torch.enable_grad(), bar:
            for tokens, labels in mine:
                bar.update()
                tokens, labels = tokens.to(device), labels.to(device)
                h = model.tok_embeddings(tokens)  # [b, s, d]
                for layer in model.layers:
                    h = layer(h)
                loss_sum, count = _loss_sum(model, h, labels)
                if count == 0:
                    continue
                grads = torch.autograd.grad(loss_sum / count, params, allow_unused=True)
                for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
                    if grad is not None:
                        weighted = grad.detach().float().abs() * param.detach().float().abs()
                        totals[i] += weighted.sum(dtype=torch.float64)
                totals[-1] += 1
    finally:
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)
        _clear_grads(model)
    tensor_scores, _ = global_means(totals, group)  # S_T per tensor
    layer_sums = [0.0] * len(model.layers)
    unit_scores: dict[int, dict[str, float]] = {i: {} for i in range(len(model.layers))}
    for (index, name, param), score in zip(units, tensor_scores, strict=True):
        layer_sums[index] += score
        unit_scores[index][name] = score / param.numel()
    top = max(layer_sums)
    layer_scores = [s / top if top > 0 else 0.0 for s in layer_sums]
    return GradientImportance(layer_scores=layer_scores, unit_scores=unit_scores)


def rank_importance(unit_scores: dict[int, dict[str, float]], num_layers: int) -> list[float]:
    """Rank-aggregated layer importance (spec S1.2 "rank").

    For each unit type (parameter name inside a layer) the layers are ranked by that unit's
    score in *descending* order: rank 1 = the layer where the unit scores highest (most
    critical), rank ``L`` = lowest; tied scores share their average rank. Then
    ``I(l) = 1 − mean over unit types of rank(l) / L``, in ``[0, 1 − 1/L]``, so as for the
    other methods a higher score means more critical: a layer that is the most critical for
    every unit type gets ``1 − 1/L``, one that is the least critical for all of them gets 0.

    Args:
        unit_scores (dict[int, dict[str, float]]): layer index -> unit name -> score, as
            ``grad_cumulative_importance`` returns.
        num_layers (int): number of layers ``L``; every index ``0..L−1`` must be present with
            the same unit names.

    Returns:
        list[float]: one score per layer.

    Raises:
        ValueError: layers missing or extra, unit names differing between layers, no units,
            or a non-finite score.
    """
    if sorted(unit_scores) != list(range(num_layers)):
        raise ValueError(
            f"unit_scores covers layers {sorted(unit_scores)}, expected 0..{num_layers - 1}"
        )
    names = sorted(unit_scores[0]) if num_layers else []
    if not names:
        raise ValueError("unit_scores has no units to rank")
    for index in range(num_layers):
        if sorted(unit_scores[index]) != names:
            raise ValueError(
                f"unit_scores of layer {index} has units {sorted(unit_scores[index])}, "
                f"layer 0 has {names}: every layer needs the same unit types"
            )
    rank_sums = [0.0] * num_layers
    for name in names:
        scores = [unit_scores[index][name] for index in range(num_layers)]
        for index, rank in enumerate(_descending_ranks(scores, name)):
            rank_sums[index] += rank / num_layers
    return [1.0 - total / len(names) for total in rank_sums]


def layer_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    method: ImportanceMethod = "mask-out",
    group: dist.ProcessGroup | None = None,
) -> list[float]:
    """Layer importance by the named method (spec S1.2); higher = more critical.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s].
        method (str): ``"mask-out"`` (default, the paper's best), ``"grad-cumulative"``,
            ``"rank"`` or ``"snr"`` (Spectrum's weight SNR, data-free).
        group (dist.ProcessGroup | None): process group to share the batches over.

    Returns:
        list[float]: one score per layer.

    Raises:
        ValueError: unknown ``method``, or as the method's function.
    """
    if method == "mask-out":
        return mask_out_importance(model, batches, group)
    if method == "grad-cumulative":
        return grad_cumulative_importance(model, batches, group).layer_scores
    if method == "rank":
        units = grad_cumulative_importance(model, batches, group).unit_scores
        return rank_importance(units, len(model.layers))
    if method == "snr":  # data-free: the batches are not read
        return snr_layer_scores(module_snr(model))
    if method == "interference":
        raise ValueError(
            "importance method='interference' also needs domain batches: use profile_layers("
            "..., domain=...) or importance.interference.interference_scores"
        )
    raise ValueError(
        f"importance method={method!r} is not supported (choose one of {list(IMPORTANCE_METHODS)})"
    )


def select_layers(scores: Sequence[float], k: int) -> list[int]:
    """The ``k`` least critical layers (spec S1.3 automatic selection).

    Args:
        scores (Sequence[float]): one importance per layer, higher = more critical.
        k (int): layers to pick, ``1 <= k < len(scores)``.

    Returns:
        list[int]: the indices of the ``k`` lowest scores (ties: lower index first), sorted
        ascending.

    Raises:
        ValueError: ``k`` out of range, or a score that is not finite.
    """
    num_layers = len(scores)
    if not 1 <= k < num_layers:
        raise ValueError(
            f"k={k} layers to expand, but the model has {num_layers} layers "
            f"(valid: 1..{num_layers - 1})"
        )
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"layer importance is not finite for layers {bad}: {list(scores)}")
    order = sorted(range(num_layers), key=lambda i: (scores[i], i))
    return sorted(order[:k])


def _descending_ranks(scores: Sequence[float], name: str) -> list[float]:
    """1-based ranks, highest score first; ties share the average of their ranks."""
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"unit {name!r} has a non-finite score: {list(scores)}")
    return tied_ranks([-s for s in scores])


def tied_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, lowest value first; ties share the average of their ranks (as
    Spearman's correlation needs them).

    Args:
        values (Sequence[float]): the values to rank.

    Returns:
        list[float]: each value's rank, in the input's order.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _loss_sum(model: nn.Module, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over supervised positions, and their count.

    Only positions whose next label counts are normalised and projected to the vocabulary,
    in chunks, so pads and prompts cost no logits and memory stays bounded.
    """
    targets = shift_labels(labels)  # [b, s]: what each position predicts
    keep = targets != CROSS_ENTROPY_IGNORE_IDX
    hidden = h[keep]  # [n, d]
    targets = targets[keep]  # [n]
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for start in range(0, targets.numel(), _LOGIT_CHUNK):
        chunk = slice(start, start + _LOGIT_CHUNK)
        logits = model.output(model.norm(hidden[chunk])).float()  # [n_chunk, v]
        total = total + F.cross_entropy(logits, targets[chunk], reduction="sum").double()
    return total, targets.numel()


def _check_probe(model: nn.Module, batches: Sequence[Batch]) -> None:
    """Validate the batches and refuse an FSDP-sharded model (the layer scores need it whole)."""
    _check_batches(model, batches)
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError(
            "layer importance needs the whole model on every rank, but its parameters are "
            "sharded (FSDP2 DTensors): profile the model before fully_shard"
        )


def _check_batches(model: nn.Module, batches: Sequence[Batch]) -> None:
    """Validate every batch on every rank, so all ranks fail alike before any collective."""
    if len(batches) == 0:
        raise ValueError("the probe has no batches: build them with probe_batches(data, ...)")
    max_seq_len = getattr(model, "max_seq_len", None)
    supervised = 0
    for i, (tokens, labels) in enumerate(batches):
        if tokens.dim() != 2 or tokens.shape != labels.shape:
            raise ValueError(
                f"probe batch {i}: tokens {tuple(tokens.shape)} and labels "
                f"{tuple(labels.shape)} must both be [batch, seq]"
            )
        if max_seq_len is not None and tokens.shape[1] > max_seq_len:
            raise ValueError(
                f"probe batch {i} has sequences of {tokens.shape[1]} tokens but the model "
                f"was built for max_seq_len={max_seq_len}: lower the probe max_seq_len"
            )
        supervised += int((shift_labels(labels) != CROSS_ENTROPY_IGNORE_IDX).sum())
    if supervised == 0:
        raise ValueError(
            "the probe has no supervised token: every label is padding or masked prompt "
            f"({CROSS_ENTROPY_IGNORE_IDX})"
        )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _clear_grads(model: nn.Module) -> None:
    for param in model.parameters():
        param.grad = None
