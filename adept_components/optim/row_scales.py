"""Per-row learning rates (``unit_tuning.units=rows``): every output neuron of a copy's matrix
is a unit, with its own multiplier.

One param group per tensor cannot hold a learning rate per row, and a gradient multiplier
would not do either: Adam divides each element's step by the root of its own second moment,
so scaling a row's gradient by ``s`` scales both moments and leaves the step unchanged. What a
per-row learning rate means is a per-row *update* multiplier: AdamW's step is
``Δ = −lr · (m̂ / (√v̂ + ε) + λ·θ)``, linear in ``lr``, so running the optimizer at the group's
lr and then setting ``θ ← θ_before + s_row · (θ_after − θ_before)`` is exactly the step at
``lr · s_row``, moments untouched (as with a smaller lr). SGD's step is linear in lr too.
``RowLRScaler`` does that around every ``optimizer.step()`` with step hooks; the unit's param
group keeps scale 1. Under FSDP2 each rank rescales its own rows (``Shard(0)`` of the matrix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from adept_components.optim.unit_groups import clean_param_name

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = ()  # type: ignore[assignment,misc]


def row_lr_scales(
    importance: Mapping[str, torch.Tensor],
    min_scale: float = 0.0,
    direction: str = "general",
    per_kind: bool = False,
) -> dict[str, torch.Tensor]:
    """``lr_scales`` with rows as units: ``w = 2 · (1 − Î)`` (``general``) per row.

    Args:
        importance (Mapping[str, torch.Tensor]): ``row_importance``'s scores.
        min_scale (float): floor of every multiplier.
        direction (str): ``general`` or ``domain`` (``w = 2 · Î``).
        per_kind (bool): normalise within each kind of unit tensor (every ``attn.q_proj``
            row of every copy together), instead of over every row of every copy.

    Returns:
        dict[str, torch.Tensor]: unit tensor name -> float64 multipliers, as the scores.
    """
    groups: dict[str, list[str]] = {}
    for name in importance:
        kind = re.sub(r"^layers\.\d+\.", "", name) if per_kind else "all"
        groups.setdefault(kind, []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in groups.values():
        flat = torch.cat([importance[n].double().flatten() for n in names])
        lo, hi = flat.min(), flat.max()
        for name in names:
            score = importance[name].double()
            if hi == lo:
                scale = torch.ones_like(score)
            else:
                relative = (score - lo) / (hi - lo)
                scale = 2.0 * (1.0 - relative) if direction == "general" else 2.0 * relative
            out[name] = scale.clamp(min=min_scale)
    return {name: out[name] for name in importance}


class RowLRScaler:
    """Scale each step's update of the named tensors row by row (see the module docstring).

    Args:
        model (nn.Module): the model (FSDP2-sharded or not).
        optimizer (Optimizer): its optimizer; step hooks are registered on it.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        self._params = {clean_param_name(n): p for n, p in model.named_parameters()}
        self.scales: dict[str, torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._local: dict[str, torch.Tensor] = {}
        optimizer.register_step_pre_hook(self._save)
        optimizer.register_step_post_hook(self._apply)

    def set_scales(self, scales: Mapping[str, torch.Tensor]) -> None:
        """Replace the multipliers (``row_lr_scales``); units not named keep scale 1."""
        unknown = sorted(set(scales) - set(self._params))
        if unknown:
            raise ValueError(f"row scales for tensors the model lacks: {unknown[:3]}")
        self.scales = {name: s.detach().double().cpu() for name, s in scales.items()}
        self._local = {name: self._local_rows(name, s) for name, s in self.scales.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"scales": dict(self.scales)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.set_scales(state["scales"])

    def _save(self, *_: Any) -> None:
        with torch.no_grad():
            self._before = {name: _data(self._params[name]).clone() for name in self._local}

    def _apply(self, *_: Any) -> None:
        with torch.no_grad():
            for name, scale in self._local.items():
                data, before = _data(self._params[name]), self._before[name]
                data.copy_(before + scale * (data - before))
        self._before = {}

    def _local_rows(self, name: str, scale: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``scale``, shaped to broadcast over the local data."""
        param = self._params[name]
        data = _data(param)
        if scale.numel() == 1:
            return scale.reshape(()).to(device=data.device, dtype=data.dtype)
        rows = scale
        if isinstance(param, DTensor):  # FSDP2 shards dim 0 in torch.chunk's pieces
            mesh = param.device_mesh
            rank, world = mesh.get_local_rank(), mesh.size()
            size = -(-scale.shape[0] // world)
            rows = scale[rank * size : rank * size + data.shape[0]]
        return rows.to(device=data.device, dtype=data.dtype).reshape(-1, *([1] * (data.dim() - 1)))


def _data(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if isinstance(param, DTensor) else param.data
