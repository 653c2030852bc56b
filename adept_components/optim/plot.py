"""S2.3/S2.4 picture: every unit's learning-rate scale at every refresh.

A heatmap, units (rows, grouped by layer) × refreshes (columns, labelled by optimizer step),
coloured by ``w_U`` on a fixed ``[0, 2]`` scale so pictures of different runs compare. It reads
``UnitScaledScheduler.history`` (also saved in its ``state_dict``) and is drawn with
matplotlib's Agg canvas, no display needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

_LAYER_UNIT = re.compile(r"^layers\.(\d+)\.(.+?)(?:\.weight|\.scale)?$")
_MAX_X_LABELS = 24


def short_unit_label(name: str) -> str:
    """A compact label for a unit: ``layers.27.attn.q_proj.weight`` -> ``L27 attn.q_proj``."""
    match = _LAYER_UNIT.match(name)
    return f"L{match.group(1)} {match.group(2)}" if match else name


def plot_scales(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Save a PNG heatmap of unit scales (rows) over refreshes (columns).

    Args:
        history (Sequence[dict]): ``UnitScaledScheduler.history``: one
            ``{"step": int, "scales": {unit: float}}`` per refresh. A unit missing from a
            refresh is drawn blank.
        path (str | Path): the PNG to write; parent directories are created.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: ``history`` is empty or a refresh has no scales.
    """
    if not history:
        raise ValueError("history is empty: no refresh has set unit scales yet")
    units: list[str] = []
    for index, entry in enumerate(history):
        if not entry.get("scales"):
            raise ValueError(f"history[{index}] has no scales")
        units.extend(name for name in entry["scales"] if name not in units)
    # [units, refreshes]
    grid = [[entry["scales"].get(name, math.nan) for entry in history] for name in units]
    steps = [entry["step"] for entry in history]

    width = min(16.0, 3.5 + 0.45 * len(history))
    height = min(40.0, 1.6 + 0.2 * len(units))
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")  # a unit absent from a refresh
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0.0, vmax=2.0)
    stride = max(1, math.ceil(len(steps) / _MAX_X_LABELS))
    ticks = list(range(0, len(steps), stride))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], rotation=90 if len(ticks) > 12 else 0)
    ax.set_yticks(range(len(units)), [short_unit_label(name) for name in units], fontsize=7)
    layers = [
        _LAYER_UNIT.match(name).group(1) if _LAYER_UNIT.match(name) else name for name in units
    ]
    for row in range(1, len(units)):
        if layers[row] != layers[row - 1]:
            ax.axhline(row - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel("refresh at optimizer step")
    ax.set_ylabel("unit")
    ax.set_title("Per-unit learning-rate scale w_U (lr = base · schedule(t) · w_U)")
    fig.colorbar(image, ax=ax, label="w_U", shrink=min(1.0, 8.0 / height + 0.2))
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
