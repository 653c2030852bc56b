"""Per-row learning rates (unit_tuning.units=rows): the update of each row equals AdamW's step at
lr times its row scale, computed by hand; the scales follow the paper's formula per row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adept_components.optim import RowLRScaler, row_lr_scales


def adamw_by_hand(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, wd=0.01):
    """AdamW (decoupled weight decay, bias-corrected) step by step, one tensor of lrs."""
    m, v, p = torch.zeros_like(p), torch.zeros_like(p), p.clone()
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_row_scales_reach_the_update_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.LayerNorm(3))
    start = model[0].weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scaler = RowLRScaler(model, optimizer)
    rows = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    scaler.set_scales({"0.weight": rows, "1.weight": torch.tensor([0.25], dtype=torch.float64)})
    grads = [torch.randn(3, 4) for _ in range(3)]
    norm_start = model[1].weight.detach().clone()
    norm_grads = [torch.randn(3) for _ in range(3)]
    for g, h in zip(grads, norm_grads, strict=True):
        model[0].weight.grad, model[1].weight.grad = g.clone(), h.clone()
        model[1].bias.grad = torch.zeros(3)
        optimizer.step()
    want = adamw_by_hand(start, grads, lr=1e-2 * rows.float()[:, None])
    torch.testing.assert_close(
        model[0].weight.detach(), want, rtol=0, atol=2.5e-7
    )  # float rounding: 1 ulp near 1
    assert torch.equal(model[0].weight[0].detach(), start[0])  # scale 0: the row is paused
    norm_want = adamw_by_hand(norm_start, norm_grads, lr=1e-2 * 0.25)
    torch.testing.assert_close(
        model[1].weight.detach(), norm_want, rtol=0, atol=2.5e-7
    )  # float rounding: 1 ulp near 1
    assert scaler.state_dict()["scales"]["0.weight"].tolist() == [0.0, 0.5, 2.0]


def test_row_lr_scales_follow_the_formula_per_row() -> None:
    scores = {
        "layers.1.attn.q_proj.weight": torch.tensor([1.0, 3.0, 5.0]),
        "layers.2.attn.q_proj.weight": torch.tensor([2.0, 4.0, 9.0]),
        "layers.1.sa_norm.scale": torch.tensor([100.0]),
        "layers.2.sa_norm.scale": torch.tensor([50.0]),
    }
    shared = row_lr_scales(scores)  # one range over every row: lo 1, hi 100
    assert shared["layers.1.attn.q_proj.weight"].tolist() == pytest.approx(
        [2 * (1 - (x - 1) / 99) for x in (1, 3, 5)]
    )
    assert shared["layers.1.sa_norm.scale"].tolist() == [0.0]
    per_kind = row_lr_scales(scores, per_kind=True)  # q rows over 1..9; norms over 50..100
    assert per_kind["layers.2.attn.q_proj.weight"].tolist() == pytest.approx(
        [2 * (1 - (x - 1) / 8) for x in (2, 4, 9)]
    )
    assert per_kind["layers.2.sa_norm.scale"].tolist() == [2.0]
    assert row_lr_scales(scores, min_scale=0.5)["layers.1.sa_norm.scale"].tolist() == [0.5]


def test_unknown_tensors_are_refused() -> None:
    model = nn.Linear(2, 2)
    scaler = RowLRScaler(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="row scales for tensors the model lacks"):
        scaler.set_scales({"nope.weight": torch.ones(2)})
