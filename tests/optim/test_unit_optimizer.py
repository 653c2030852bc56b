"""The optimizer builder: any Optimizer class by dotted path over one group per unit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_QWEN3, save_hf_model
from optim_fixtures import COPIES, QWEN3_LAYER_UNITS, tiny_qwen3
from torch import nn
from torchtune.training import get_cosine_schedule_with_warmup

from adept_components.optim import (
    UnitScaledScheduler,
    lr_scales,
    resolve_optimizer_class,
    unit_optimizer,
)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny Qwen3, written once per module."""
    return save_hf_model(tmp_path_factory.mktemp("qwen3"), TINY_QWEN3)


def test_adamw_groups_named_per_unit(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    optimizer = unit_optimizer(
        model, COPIES, "torch.optim.AdamW", lr=2e-4, weight_decay=0.05, betas=[0.8, 0.9]
    )
    assert type(optimizer) is torch.optim.AdamW
    names = [g["name"] for g in optimizer.param_groups]
    assert names == [f"layers.{i}.{u}" for i in COPIES for u in QWEN3_LAYER_UNITS]
    for group in optimizer.param_groups:
        assert group["lr"] == 2e-4
        assert group["weight_decay"] == 0.05
        assert group["betas"] == (0.8, 0.9)  # a YAML list becomes a tuple
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    assert resolve_optimizer_class(torch.optim.SGD) is torch.optim.SGD


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("torch.optim.AdamX", r"'torch.optim.AdamX' cannot be imported"),
        ("no_such_package.Optim", "cannot be imported: check the spelling"),
        ("AdamW", "not a dotted path"),
        ("torch.nn.Linear", "not a torch.optim.Optimizer subclass"),
        ("torch.optim.lr_scheduler.StepLR", "not a torch.optim.Optimizer subclass"),
        ("torch.optim.lr_scheduler", "not a torch.optim.Optimizer subclass"),  # a module
    ],
)  # fmt: skip
def test_bad_optimizer_class(qwen3_dir: Path, path: str, message: str) -> None:
    model = tiny_qwen3(qwen3_dir)
    with pytest.raises(ValueError, match=message):
        unit_optimizer(model, COPIES, path)


def test_bad_arguments(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    with pytest.raises(ValueError, match=r"lr=0 must be a positive number"):
        unit_optimizer(model, COPIES, lr=0)
    with pytest.raises(ValueError, match=r"does not accept the optimizer arguments \['momentum'\]"):
        unit_optimizer(model, COPIES, "torch.optim.AdamW", momentum=0.9)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="a model with no trainable copies"):
        unit_optimizer(model, COPIES)


def test_torchao_adamw8bit_takes_unit_groups(qwen3_dir: Path) -> None:
    """torchao keeps extra group keys and makes lr a tensor; the scheduler fills it in place."""
    from torchao.optim import AdamW4bit, AdamW8bit, AdamWFp8

    model = tiny_qwen3(qwen3_dir)
    for cls in (AdamW8bit, AdamW4bit, AdamWFp8):
        optimizer = unit_optimizer(model, COPIES, f"torchao.optim.{cls.__name__}", lr=1e-3)
        assert type(optimizer) is cls
        assert [g["name"] for g in optimizer.param_groups][:2] == [
            "layers.1.attn.q_proj.weight",
            "layers.1.attn.k_proj.weight",
        ]
        assert len(optimizer.param_groups) == 22

    optimizer = unit_optimizer(model, COPIES, "torchao.optim.AdamW8bit", lr=1e-3)
    lr_tensors = [g["lr"] for g in optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) for lr in lr_tensors)
    scheduler = UnitScaledScheduler(optimizer, get_cosine_schedule_with_warmup(optimizer, 2, 10))
    names = [g["name"] for g in optimizer.param_groups]
    scales = lr_scales({name: float(i) for i, name in enumerate(names)})
    optimizer.step()  # no gradients: nothing moves, no compile
    scheduler.step()  # warmup step 1: schedule 0.5
    scheduler.set_scales(scales, step=1)
    assert optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-3 * 0.5 * 2.0, rel=1e-6)
    optimizer.step()
    scheduler.step()  # step 2: schedule 1.0
    for group, tensor in zip(optimizer.param_groups, lr_tensors, strict=True):
        assert group["lr"] is tensor  # updated in place: torchao's step refuses a float lr
        # float32 lr tensors: exact up to the float32 rounding of base · schedule · w
        assert group["lr"].item() == pytest.approx(1e-3 * 1.0 * scales[group["name"]], rel=1e-6)
    assert scheduler.base_lr() == pytest.approx(1e-3, rel=1e-7)


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # 64 x 64 = 4096 values: torchao quantises the Adam state of tensors this large.
        self.layers = nn.ModuleList([nn.Linear(64, 64, bias=False) for _ in range(2)])


@pytest.mark.filterwarnings("ignore:OptimState8bit does not implement")
def test_torchao_adamw8bit_step_uses_the_unit_lr() -> None:
    """One real 8-bit step on CPU (one torch.compile of torchao's kernel, a few seconds)."""
    torch.manual_seed(0)
    model = _TwoLayers()
    optimizer = unit_optimizer(model, [0, 1], "torchao.optim.AdamW8bit", lr=1e-2, weight_decay=0.0)
    scheduler = UnitScaledScheduler(
        optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    )
    scheduler.set_scales({"layers.0.weight": 0.0, "layers.1.weight": 1.5}, step=0)
    before = [layer.weight.detach().clone() for layer in model.layers]
    sum(layer.weight.square().sum() for layer in model.layers).backward()
    optimizer.step()
    assert torch.equal(model.layers[0].weight, before[0])  # w = 0: paused
    # First Adam step moves every element by lr (update = g / |g|): 1e-2 · 1.5.
    moved = (model.layers[1].weight - before[1]).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1.5e-2), rtol=1e-3, atol=1e-5)
    state = optimizer.state[model.layers[1].weight]
    assert type(state["exp_avg"]).__name__ == "OptimState8bit"
