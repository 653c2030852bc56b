"""The S2.3/S2.4 scales picture: a PNG heatmap of units × refreshes."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread
from optim_fixtures import QWEN3_LAYER_UNITS, named_groups
from torch.optim.lr_scheduler import StepLR

from adept_components.optim import UnitScaledScheduler, lr_scales, plot_scales
from adept_components.optim.plot import short_unit_label

UNITS = [f"layers.{i}.{u}" for i in (5, 8) for u in QWEN3_LAYER_UNITS]


def test_plot_scales_writes_a_png_of_the_history(tmp_path: Path) -> None:
    optimizer = named_groups(UNITS)
    scheduler = UnitScaledScheduler(optimizer, StepLR(optimizer, 10))
    for refresh, step in enumerate((0, 500, 1000, 1500, 2000)):
        importance = {name: float((i * (refresh + 3)) % 7) for i, name in enumerate(UNITS)}
        scheduler.set_scales(lr_scales(importance), step=step)
    out = plot_scales(scheduler.history, tmp_path / "plots" / "unit_lr_scales.png")
    assert out == tmp_path / "plots" / "unit_lr_scales.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(out).shape
    assert height > 500 and width > 300  # 22 readable rows


def test_short_labels_and_bad_history(tmp_path: Path) -> None:
    assert short_unit_label("layers.27.attn.q_proj.weight") == "L27 attn.q_proj"
    assert short_unit_label("layers.3.sa_norm.scale") == "L3 sa_norm"
    with pytest.raises(ValueError, match="history is empty"):
        plot_scales([], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"history\[0\] has no scales"):
        plot_scales([{"step": 0, "scales": {}}], tmp_path / "x.png")
