"""Tiny models, named param groups and reference formulas shared by the optim tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from conftest import QWEN3_LAYER_UNITS, TINY_QWEN3
from torch import nn

from adept_components.models import model_from_hf_config
from adept_components.trainable import freeze_all_but

LLAMA_LAYER_UNITS = tuple(
    u for u in QWEN3_LAYER_UNITS if u not in ("attn.q_norm.scale", "attn.k_norm.scale")
)
COPIES = (1, 3)  # trainable layers of the 4-layer tiny models

BASE_LR = 3e-4
WARMUP, TOTAL = 5, 50


def cosine_with_warmup(step: int) -> float:
    """Independent copy of the HF/torchtune schedule: linear warmup from 0, half cosine to 0."""
    if step < WARMUP:
        return step / WARMUP
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def reference_scales(
    importance: dict[str, float],
    min_scale: float = 0.0,
    separate_norm_range: bool = False,
    direction: str = "general",
) -> dict[str, float]:
    """Naive spec S2.3 formula, written apart from the implementation."""

    def kind(name: str) -> str:
        return "norm" if name.rsplit(".", 2)[-2].endswith("norm") else "matrix"

    out = {}
    for name, score in importance.items():
        pool = [
            s for n, s in importance.items() if not separate_norm_range or kind(n) == kind(name)
        ]
        lo, hi = min(pool), max(pool)
        if hi == lo:
            w = 1.0
        elif direction == "general":
            w = 2.0 * (1.0 - (score - lo) / (hi - lo))
        else:
            w = 2.0 * ((score - lo) / (hi - lo))
        out[name] = max(w, min_scale)
    return out


def named_groups(names: list[str], lr: float = BASE_LR) -> torch.optim.AdamW:
    """An AdamW with one named 1-element group per unit name (no model needed for lr tests)."""
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "name": name} for name in names]
    return torch.optim.AdamW(groups, lr=lr)


def tiny_qwen3(directory: Path, copies: tuple[int, ...] = COPIES, seed: int = 0) -> nn.Module:
    """The tiny Qwen3 that conftest's ``save_hf_model`` wrote (4 layers), only ``copies`` trainable."""
    torch.manual_seed(seed)
    model = model_from_hf_config(str(directory))
    freeze_all_but(model, list(copies))
    return model


def lm_loss(model: nn.Module, seed: int) -> torch.Tensor:
    """Next-token CE of the model on a fixed random batch [2, 12]."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY_QWEN3["vocab_size"], (2, 12), generator=generator)
    logits = model(tokens)  # [b, s, v]
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
