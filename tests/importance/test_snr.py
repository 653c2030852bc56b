"""Spectrum's weight SNR: equal to a naive NumPy implementation; data-free layer scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adept_components.data import ProbeSetInfo
from adept_components.importance import (
    check_snr_applies,
    matrix_snr,
    module_snr,
    profile_layers,
    snr_layer_scores,
    spectrum_selection,
)
from adept_components.models.qwen3 import qwen3


def naive_snr(w: np.ndarray) -> float:
    """Spectrum's published procedure, step by step, in NumPy (float64)."""
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    q75, q25 = np.quantile(s, 0.75), np.quantile(s, 0.25)
    sigma = (q75 - q25) / 1.349
    n, m = w.shape
    beta = n / m if n < m else m / n
    threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal = s[s > threshold].sum()
    noise = s[s <= threshold].sum() if (s <= threshold).any() else 1.0
    return float(signal / noise / s[0])


@pytest.mark.parametrize("shape", [(64, 64), (48, 160), (200, 32)])
def test_matrix_snr_equals_the_naive_implementation(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    low_rank = torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g)
    w = 0.1 * torch.randn(*shape, generator=g) + low_rank  # signal over noise
    assert matrix_snr(w) == pytest.approx(naive_snr(w.numpy()), rel=1e-4)


def small_model(num_layers: int = 4, dim: int = 64):
    torch.manual_seed(0)
    return qwen3(
        vocab_size=97, num_layers=num_layers, num_heads=4, num_kv_heads=2, embed_dim=dim,
        intermediate_dim=3 * dim, max_seq_len=32, head_dim=dim // 4,
    )  # fmt: skip


def test_layer_scores_select_and_profile_are_data_free() -> None:
    model = small_model()
    with torch.no_grad():  # the published ratio divides by s_1: a 10x smaller layer scores 10x
        for module in model.layers[2].modules():
            if isinstance(module, torch.nn.Linear):
                module.weight *= 0.1
    per_module = module_snr(model)
    assert sorted(per_module) == [0, 1, 2, 3] and len(per_module[0]) == 7
    assert per_module[2]["attn.q_proj"] == pytest.approx(
        naive_snr(model.layers[2].attn.q_proj.weight.detach().numpy()), rel=1e-4
    )
    scores = snr_layer_scores(per_module)
    assert scores[2] == pytest.approx(1.0) and max(scores) == scores[2]
    info = ProbeSetInfo("none", "text", "train", num_samples=0, max_seq_len=0, num_tokens=0)
    profile = profile_layers(model, [], info, k=1, method="snr")  # no batches: data-free
    assert profile.layer_scores == {"snr": scores} and profile.base_loss is None
    assert profile.selected_layers == [min(range(4), key=scores.__getitem__)]
    assert profile.unit_scores[2]["attn.q_proj.weight"] == per_module[2]["attn.q_proj"]
    chosen = spectrum_selection(per_module, fraction=0.25)  # one of four layers per kind
    assert len(chosen) == 7 and all(name.startswith("layers.2.") for name in chosen)


def test_matrices_too_small_for_snr_are_refused() -> None:
    with torch.device("meta"):
        model = small_model(dim=8)
    with pytest.raises(ValueError, match=r"attn.k_proj is 4x8, 4 singular values, too few"):
        check_snr_applies(model)
