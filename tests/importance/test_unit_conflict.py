"""Conflict-aware unit scores (unit_tuning.scoring=conflict) against a naive reference, and
per-kind normalisation of the unit learning-rate scales (unit_tuning.scoring=per_kind)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from importance_fixtures import IGNORE, self_labelled_batches, tiny_model

from adept_components.importance import unit_conflict
from adept_components.optim import lr_scales
from adept_components.trainable import freeze_all_but


def naive_mean_gradients(model, batches, names):
    """Per batch loss.backward() into .grad, summed; nothing shared with the implementation."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.grad = None
    for tokens, labels in batches:
        logits = model(tokens)[:, :-1]
        target = labels[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        loss.backward()
    return {name: params[name].grad.clone() for name in names}


def test_conflict_equals_the_naive_cosine() -> None:
    model = tiny_model(num_layers=4, near_identity=())
    freeze_all_but(model, [1, 3])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    general = self_labelled_batches(model, [[12, 9], [16, 16]], seed=1)
    domain = self_labelled_batches(model, [[10, 14], [16, 8]], seed=2)
    # the domain labels: random ones, so that some units' gradients oppose the general ones
    g = torch.Generator().manual_seed(3)
    domain = [(t, torch.where(y == IGNORE, y, torch.randint_like(y, 0, model.tok_embeddings.num_embeddings, generator=g))) for t, y in domain]  # fmt: skip
    scores = unit_conflict(model, general, domain)
    a = naive_mean_gradients(model, domain, names)
    b = naive_mean_gradients(model, general, names)
    assert list(scores) == names
    for name in names:
        cos = float((a[name] * b[name]).sum() / (a[name].norm() * b[name].norm()))
        assert scores[name] == pytest.approx(max(0.0, -cos), abs=1e-5), name
    assert any(s > 0 for s in scores.values()) and any(s == 0 for s in scores.values())
    assert all(p.grad is None for p in model.parameters())  # no trace


def test_per_kind_scales_span_zero_to_two_within_each_kind() -> None:
    kinds = ["attn.q_proj.weight", "mlp.w2.weight", "sa_norm.scale"]
    scores = {
        f"layers.{layer}.{kind}": (1 + i) * 10.0 ** (2 - j) + layer  # norms far below matrices
        for j, kind in enumerate(kinds)
        for i, layer in enumerate([4, 7, 17, 21])
    }
    per_kind = lr_scales(scores, per_kind=True)
    for kind in kinds:
        values = [w for name, w in per_kind.items() if name.endswith(kind)]
        assert min(values) == 0.0 and max(values) == 2.0, (kind, values)
    shared = lr_scales(scores)  # the paper's: one range, the small kinds pinned near 2
    assert min(w for n, w in shared.items() if n.endswith("sa_norm.scale")) > 1.9
    assert per_kind["layers.7.mlp.w2.weight"] == pytest.approx(
        2 * (1 - (20 + 7 - 14) / (40 + 21 - 14))
    )
