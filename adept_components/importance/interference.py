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
forward passes over the probe.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from adept_components.importance.layer_importance import Batch, _loss_sum


def interference_scores(
    model: nn.Module,
    general: Sequence[Batch],
    domain: Sequence[Batch],
    fills: dict[str, float],
    candidates: Sequence[int] | None = None,
    chunk: int | None = None,
    eps: float = 1e-8,
) -> dict[int, float]:
    """Predicted general-loss increase per nat of domain gain of a trained copy of each layer.

    Args:
        model (nn.Module): the base decoder (``model.layers``), left unchanged.
        general (Sequence[Batch]): general probe batches ``(tokens, labels)``.
        domain (Sequence[Batch]): domain batches ``(tokens, labels)``.
        fills (dict[str, float]): how a copy starts (``expansion.copy_fills``).
        candidates (Sequence[int] | None): base layers to score; default every layer.
        chunk (int | None): copies per pass (memory); default all candidates in one pass.
        eps (float): Adam's epsilon in the update direction.

    Returns:
        dict[int, float]: base layer -> score (lower: less interference per domain gain).

    Raises:
        ValueError: no batches of either kind, or a candidate out of range.
    """
    if not general or not domain:
        raise ValueError("interference needs general probe batches and domain batches")
    layers = list(range(len(model.layers)) if candidates is None else candidates)
    if any(not 0 <= i < len(model.layers) for i in layers):
        raise ValueError(f"candidates {layers} are not layers of a {len(model.layers)}-layer model")
    size = chunk or len(layers)
    scores: dict[int, float] = {}
    for start in range(0, len(layers), size):
        scores.update(
            _score_chunk(model, general, domain, fills, layers[start : start + size], eps)
        )
    return scores


def _score_chunk(
    model: nn.Module,
    general: Sequence[Batch],
    domain: Sequence[Batch],
    fills: dict[str, float],
    sources: list[int],
    eps: float,
) -> dict[int, float]:
    """Copies of ``sources`` inserted at once, scored in one pass over each kind of data."""
    original = model.layers
    copies = {source: _function_preserving_copy(original[source], fills) for source in sources}
    expanded = nn.ModuleList()
    for index, layer in enumerate(original):
        expanded.append(layer)
        if index in copies:
            expanded.append(copies[index])
    was_training = model.training
    grad_state = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for layer in copies.values():
        layer.requires_grad_(True)
    model.layers = expanded
    model.eval()  # no dropout: the gradients of the weights as they are
    try:
        params = {s: list(layer.parameters()) for s, layer in copies.items()}
        flat = [p for s in sources for p in params[s]]
        first = [torch.zeros_like(p, dtype=torch.float32) for p in flat]
        second = [torch.zeros_like(p, dtype=torch.float32) for p in flat]
        for batch in domain:
            grads = _gradients(model, [batch], flat)
            for m, v, g in zip(first, second, grads, strict=True):
                m.add_(g)
                v.add_(g * g)
        general_grads = _gradients(model, general, flat)
        out, offset = {}, 0
        for source in sources:
            count = len(params[source])
            gen, dom = 0.0, 0.0
            for i in range(offset, offset + count):
                m, v = first[i] / len(domain), second[i] / len(domain)
                direction = m / (v.sqrt() + eps)
                gen += float((general_grads[i] * direction).sum())
                dom += float((m * direction).sum())
            offset += count
            out[source] = -gen / dom if dom > 0 else float("inf")
        return out
    finally:
        model.layers = original
        for p, flag in grad_state.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _function_preserving_copy(layer: nn.Module, fills: dict[str, float]) -> nn.Module:
    """A deep copy of ``layer`` whose tensors named by ``fills`` hold the fill value."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            fill = next((v for prefix, v in fills.items() if name.startswith(prefix)), None)
            if fill is not None:
                param.fill_(fill)
    return twin


def _gradients(
    model: nn.Module, batches: Sequence[Batch], params: list[nn.Parameter]
) -> list[torch.Tensor]:
    """Gradient of the token-mean loss over ``batches`` with respect to ``params`` (fp32)."""
    device = params[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for tokens, labels in batches:
        tokens, labels = tokens.to(device), labels.to(device)
        h = model.tok_embeddings(tokens)
        for layer in model.layers:
            h = layer(h)
        loss_sum, n = _loss_sum(model, h, labels)
        total = total + loss_sum
        count += n
    grads = torch.autograd.grad((total / max(count, 1)).float(), params, allow_unused=True)
    return [
        torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
        for p, g in zip(params, grads, strict=True)
    ]
