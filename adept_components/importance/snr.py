"""Data-free layer importance from the signal-to-noise ratio of the weight matrices (Spectrum).

Spectrum (Hartford et al., 2024, "Spectrum: Targeted Training on Signal to Noise Ratio") scores
each weight matrix ``W`` (``n x m``) from its singular values ``s_1 >= ... >= s_r`` alone:

- the noise scale is estimated robustly from their spread, ``sigma = IQR(s) / 1.349`` (the IQR
  of a normal distribution is 1.349 standard deviations);
- the Marchenko–Pastur bound for the largest singular value of pure noise of that scale is
  ``sigma * (1 + sqrt(beta))`` with ``beta = min(n, m) / max(n, m)``;
- singular values above it are signal, the rest noise; ``SNR = sum(signal) / sum(noise)``,
  divided by ``s_1`` (the published code's ``snr_ratio``, which its layer selection ranks
  by). Note that this division makes the score scale-dependent: ``c * W`` scores ``1/c`` times
  ``W``'s, so among matrices of one kind the smaller ones rank higher.

Spectrum compares matrices of one kind with each other (every ``q_proj``, every ``down_proj``).
A layer's score here is the mean over its kinds of ``SNR / max SNR of that kind``: in [0, 1],
higher = more signal. As an ADEPT probe (``expansion.importance=snr``) the k lowest-scoring
layers are copied; the ``spectrum`` method instead trains the top-SNR fraction of each kind of
the original matrices, with no expansion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# Fewer singular values than this give no usable quartiles (and no bulk to call noise).
MIN_SINGULAR_VALUES = 16
_KINDS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "mlp.w1", "mlp.w2",
          "mlp.w3")  # fmt: skip


def matrix_snr(weight: torch.Tensor) -> float:
    """Spectrum's SNR of one weight matrix (its ``snr_ratio``).

    Args:
        weight (torch.Tensor): a 2-D weight.

    Returns:
        float: ``sum(s > threshold) / sum(s <= threshold) / s_1`` (noise sum 1 when every
        singular value is signal, as the published code does).

    Raises:
        ValueError: a matrix with fewer than ``MIN_SINGULAR_VALUES`` singular values.
    """
    n, m = weight.shape
    if min(n, m) < MIN_SINGULAR_VALUES:
        raise ValueError(
            f"a {n}x{m} matrix has {min(n, m)} singular values, too few to estimate its noise "
            f"(snr needs at least {MIN_SINGULAR_VALUES}): use another expansion.importance"
        )
    s = torch.linalg.svdvals(weight.detach().float())
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    threshold = sigma * (1 + math.sqrt(min(n, m) / max(n, m)))
    signal = s[s > threshold].sum()
    noise = s[s <= threshold].sum() if bool((s <= threshold).any()) else torch.tensor(1.0)
    return float(signal / noise / s[0])


def check_snr_applies(model: nn.Module) -> None:
    """Refuse, before any work, a model whose matrices are too small for the SNR estimate.

    Args:
        model (nn.Module): the decoder (the meta device will do: only shapes are read).

    Raises:
        ValueError: naming the smallest matrix.
    """
    layer = model.layers[0]
    shapes = {kind: tuple(layer.get_submodule(kind).weight.shape) for kind in _KINDS}
    kind, shape = min(shapes.items(), key=lambda item: min(item[1]))
    if min(shape) < MIN_SINGULAR_VALUES:
        raise ValueError(
            f"weight SNR (expansion.importance=snr, method=spectrum): the model's {kind} is "
            f"{shape[0]}x{shape[1]}, "
            f"{min(shape)} singular values, too few to estimate its noise (at least "
            f"{MIN_SINGULAR_VALUES}): use expansion.importance=mask-out or another method"
        )


def module_snr(model: nn.Module) -> dict[int, dict[str, float]]:
    """SNR of every attention and MLP matrix of every layer.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder`` (unsharded).

    Returns:
        dict: layer -> kind (``attn.q_proj``, ..., ``mlp.w3``) -> SNR.
    """
    scores: dict[int, dict[str, float]] = {}
    for index, layer in enumerate(model.layers):
        scores[index] = {}
        for kind in _KINDS:
            module = layer.get_submodule(kind)
            scores[index][kind] = matrix_snr(module.weight)
    return scores


def snr_layer_scores(per_module: dict[int, dict[str, float]]) -> list[float]:
    """One score per layer: the mean over kinds of SNR / the kind's largest SNR.

    Args:
        per_module (dict): ``module_snr``'s result.

    Returns:
        list[float]: per layer, in [0, 1].
    """
    layers = sorted(per_module)
    kinds = list(per_module[layers[0]])
    best = {kind: max(per_module[layer][kind] for layer in layers) or 1.0 for kind in kinds}
    return [sum(per_module[layer][k] / best[k] for k in kinds) / len(kinds) for layer in layers]


def spectrum_selection(per_module: dict[int, dict[str, float]], fraction: float) -> list[str]:
    """Spectrum's trained matrices: the top ``fraction`` by SNR within each kind.

    Args:
        per_module (dict): ``module_snr``'s result.
        fraction (float): share of each kind to train, in (0, 1] (at least one per kind).

    Returns:
        list[str]: parameter names (``layers.3.attn.q_proj.weight``), in model order.
    """
    layers = sorted(per_module)
    chosen: set[tuple[int, str]] = set()
    for kind in per_module[layers[0]]:
        ranked: Sequence[int] = sorted(layers, key=lambda layer: -per_module[layer][kind])
        count = max(1, int(len(layers) * fraction))
        chosen.update((layer, kind) for layer in ranked[:count])
    return [
        f"layers.{layer}.{kind}.weight"
        for layer in layers
        for kind in per_module[layer]
        if (layer, kind) in chosen
    ]
