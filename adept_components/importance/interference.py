"""Stage 1 by predicted interference: how much general loss a trained copy would cost.

Mask-out asks how much the base model needs a layer. What decides forgetting is another
question: once a copy of that layer trains on the domain, how much does it disturb general
text? This module predicts that to first order, for every candidate at once.

A function-preserving copy is inserted after every candidate layer. At that point every copy
is an identity map (its residual writers are zero, or its post-branch gains are), so the loss,
and the gradient that reaches each copy, is exactly what it would be with that copy alone:
all candidates are scored in one pass, equal to scoring them one by one (tested).

For the copy at candidate ``p`` with parameters θ_p:

- the domain batches give per-batch gradients g_b; Adam's update direction after them is
  ``u = mean(g_b) / (sqrt(mean(g_b²)) + eps)`` (its first step is ``sign(g)``), the
  optimizer's rule rather than plain SGD's ``g``;
- a step of size ``lr`` along ``-u`` lowers the domain loss by ``lr · <mean(g_b), u>`` and
  changes the general loss by ``-lr · <g_gen, u>`` (g_gen: the general probe's gradient);
- the score is their ratio, the general loss increase per nat of domain gain:
  ``-<g_gen, u> / <mean(g_b), u>``; ``lr`` cancels. The k lowest are copied.

Only the units that open a copy have a gradient at the start (its zeroed projections, or its
post-branch gains), so the prediction is that of the first steps, which set the direction.

Cost: one forward and backward pass of the model with all copies over the probe and as many
domain batches (``chunk`` copies at a time where memory is short), against mask-out's L + 1
forward passes over the probe. Memory: the copies, and three fp32 buffers of their size
(the two Adam moments and the general gradient), which ``chunk`` bounds.

Distributed: as the other probes, every rank is given the same batches, takes its share
(``batches[rank::world]``) and the sums (gradient sums, squared per-batch gradients, token and
batch counts) are all-reduced, so every rank holds the one-process scores and selects the same
layers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from adept_components.distributed import all_reduce_sum, rank_share
from adept_components.importance.layer_importance import Batch, _check_probe, _loss_sum
from adept_components.losses import eval_mode
from adept_components.progress import progress_bar


def interference_scores(
    model: nn.Module,
    general: Sequence[Batch],
    domain: Sequence[Batch],
    fills: dict[str, float],
    candidates: Sequence[int] | None = None,
    chunk: int | None = None,
    eps: float = 1e-8,
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> dict[int, float]:
    """Predicted general-loss increase per nat of domain gain of a trained copy of each layer.

    Args:
        model (nn.Module): the base decoder (``model.layers``), whole on every rank; left
            unchanged (weights, ``requires_grad`` flags, train/eval mode, ``.grad``).
        general (Sequence[Batch]): general probe batches ``(tokens, labels)``; the general
            gradient is that of the token-mean loss over all of them.
        domain (Sequence[Batch]): domain batches ``(tokens, labels)``; each one is a step's
            gradient ``g_b`` of Adam's moments.
        fills (dict[str, float]): how a copy starts (``expansion.copy_fills``).
        candidates (Sequence[int] | None): base layers to score; default every layer.
        chunk (int | None): copies per pass (memory); default all candidates in one pass.
        eps (float): Adam's epsilon in the update direction.
        group (dist.ProcessGroup | None): process group to share the batches over.
        progress (bool): show a bar of this rank's batches.

    Returns:
        dict[int, float]: base layer -> score (higher: more general loss per nat of domain
        gain; the k lowest are copied). ``inf`` where no domain gradient reaches the copy.

    Raises:
        ValueError: no batches of either kind, invalid batches, a candidate out of range,
            or ``chunk`` < 1.
    """
    if not general or not domain:
        raise ValueError("interference needs general probe batches and domain batches")
    _check_probe(model, general)
    _check_probe(model, domain)
    num_layers = len(model.layers)
    layers = list(range(num_layers) if candidates is None else candidates)
    if any(not 0 <= i < num_layers for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(
            f"candidates {layers} are not distinct layers of a {num_layers}-layer model"
        )
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk={chunk}: copies per pass must be at least 1")
    size = chunk or len(layers)
    scores: dict[int, float] = {}
    for start in range(0, len(layers), size):
        sources = layers[start : start + size]
        scores.update(_score_chunk(model, general, domain, fills, sources, eps, group, progress))
    return scores


def _score_chunk(
    model: nn.Module,
    general: Sequence[Batch],
    domain: Sequence[Batch],
    fills: dict[str, float],
    sources: list[int],
    eps: float,
    group: dist.ProcessGroup | None,
    progress: bool,
) -> dict[int, float]:
    """Copies of ``sources`` inserted at once, scored in one pass over each kind of data."""
    original = model.layers
    copies = {source: _function_preserving_copy(original[source], fills) for source in sources}
    expanded = nn.ModuleList()
    for index, layer in enumerate(original):
        expanded.append(layer)
        if index in copies:
            expanded.append(copies[index])
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    for layer in copies.values():
        layer.requires_grad_(True)
    model.layers = expanded
    try:
        params = {s: list(layer.parameters()) for s, layer in copies.items()}
        flat = [p for s in sources for p in params[s]]
        device = flat[0].device
        # Adam's moments after one step per domain batch (uniform weights), then the
        # general probe's token-mean gradient: sums on this rank, all-reduced below.
        first = [torch.zeros_like(p, dtype=torch.float32) for p in flat]
        second = [torch.zeros_like(p, dtype=torch.float32) for p in flat]
        general_sum = [torch.zeros_like(p, dtype=torch.float32) for p in flat]
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # [domain batches, tokens]
        mine_domain, mine_general = rank_share(domain, group), rank_share(general, group)
        bar = progress_bar(len(mine_domain) + len(mine_general), "interference (batch)", progress)
        with eval_mode(model), torch.enable_grad(), bar:  # no dropout: the weights as they are
            for batch in mine_domain:
                bar.update()
                grads, tokens = _loss_sum_gradients(model, batch, flat)
                if tokens == 0:
                    continue
                for m, v, g in zip(first, second, grads, strict=True):
                    g = g / tokens
                    m.add_(g)
                    v.add_(g * g)
                counts[0] += 1
            for batch in mine_general:
                bar.update()
                grads, tokens = _loss_sum_gradients(model, batch, flat)
                for total, g in zip(general_sum, grads, strict=True):
                    total.add_(g)
                counts[1] += tokens
        for buffer in (*first, *second, *general_sum):
            all_reduce_sum(buffer, group)
        all_reduce_sum(counts, group)
        batches, tokens = float(counts[0]), float(counts[1])
        out, offset = {}, 0
        for source in sources:
            gen = dom = 0.0
            for i in range(offset, offset + len(params[source])):
                m, v = first[i] / batches, second[i] / batches
                direction = m / (v.sqrt() + eps)
                gen += float((general_sum[i] / tokens * direction).sum(dtype=torch.float64))
                dom += float((m * direction).sum(dtype=torch.float64))
            offset += len(params[source])
            out[source] = -gen / dom if dom > 0 else float("inf")
        return out
    finally:
        model.layers = original
        for p, flag in flags:
            p.requires_grad_(flag)


def _function_preserving_copy(layer: nn.Module, fills: dict[str, float]) -> nn.Module:
    """A deep copy of ``layer`` whose tensors named by ``fills`` hold the fill value."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            fill = next((v for prefix, v in fills.items() if name.startswith(prefix)), None)
            if fill is not None:
                param.fill_(fill)
    return twin


def _loss_sum_gradients(
    model: nn.Module, batch: Batch, params: list[nn.Parameter]
) -> tuple[list[torch.Tensor], int]:
    """Gradient of one batch's summed token loss with respect to ``params`` (fp32), and its
    supervised token count (no gradient is taken, and zeros returned, when it has none)."""
    tokens, labels = batch
    device = params[0].device
    h = model.tok_embeddings(tokens.to(device))
    for layer in model.layers:
        h = layer(h)
    loss_sum, count = _loss_sum(model, h, labels.to(device))
    if count == 0:
        return [torch.zeros_like(p, dtype=torch.float32) for p in params], 0
    grads = torch.autograd.grad(loss_sum.float(), params, allow_unused=True)
    return [
        torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
        for p, g in zip(params, grads, strict=True)
    ], count
