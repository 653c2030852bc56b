"""S2.3 asymmetric per-unit learning rates and S2.4 their refresh.

``lr_scales`` turns unit importance (S2.2) into learning-rate multipliers ``w_U``;
``UnitScaledScheduler`` wraps any torch LR scheduler so that every unit's param group runs at
``lr = base_lr · schedule(t) · w_U``; ``RefreshPolicy`` says at which optimizer steps the
importance is re-scored and the multipliers replaced.

The multiplier must never compound (spec S2.3). Chainable schedulers (``StepLR``,
``ExponentialLR``, ``ReduceLROnPlateau``) compute the next lr from ``group["lr"]``; if that lr
already carried ``w_U`` the scales would multiply up step after step and refresh after
refresh. The wrapper therefore keeps each group's *unscaled* lr (``group["unscaled_lr"]``),
puts it back before every inner ``step()``, reads the new unscaled lr the scheduler wrote, and
only then applies the scale. Closed-form schedulers (torchtune's
``get_cosine_schedule_with_warmup``, a ``LambdaLR`` over ``initial_lr``) are unaffected by
the round trip, so one code path serves both.

Typical use in a recipe::

    optimizer = unit_optimizer(model, meta.copy_positions, lr=1e-4)
    scheduler = UnitScaledScheduler(
        optimizer, get_cosine_schedule_with_warmup(optimizer, 100, 10_000)
    )
    policy = RefreshPolicy(refresh_every=500)
    for step in range(1, num_steps + 1):
        ...  # forward, backward over the accumulation window
        optimizer.step(); optimizer.zero_grad(); scheduler.step()
        if policy.due(step):
            scheduler.set_scales(lr_scales(score_units(model)), step=step)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from adept_components.optim.unit_groups import unit_kind

Direction = Literal["general", "domain"]
DIRECTIONS: tuple[str, ...] = ("general", "domain")
# Param-group key holding the lr the inner scheduler computed, before the unit's scale.
UNSCALED_LR_KEY = "unscaled_lr"
_STATE_KEYS = ("scheduler", "scales", "unscaled_lrs", "last_refresh_step", "history")


def lr_scales(
    importance: Mapping[str, float],
    min_scale: float = 0.0,
    separate_norm_range: bool = False,
    direction: Direction = "general",
    per_kind: bool = False,
) -> dict[str, float]:
    """Learning-rate multipliers from unit importance (spec S2.3).

    With ``lo``/``hi`` the smallest/largest score, each unit gets
    ``Î = (I − lo) / (hi − lo)`` and

    - ``direction="general"``: ``w = 2 · (1 − Î)`` (units critical for general competence
      learn slowly; the paper's setting),
    - ``direction="domain"``: ``w = 2 · Î`` (the reverse),

    then ``w = max(w, min_scale)``. When ``hi == lo`` (all scores equal, or one unit) every
    unit gets ``w = max(1, min_scale)``. So ``w ∈ [min_scale, 2]`` and, with the default
    ``min_scale=0``, the most (``general``) or least (``domain``) important unit is paused
    until the next refresh, as in the paper. The floor is a clamp, not a rescale: units
    already above ``min_scale`` keep their exact value.

    Args:
        importance (Mapping[str, float]): unit name -> S2.2 score (finite, any sign).
        min_scale (float): floor of every multiplier, in ``[0, 2]``.
        separate_norm_range (bool): normalise norm units and matrix units separately, each
            kind over its own ``lo``/``hi`` (``unit_kind``), so tiny norm scales and large
            matrices are not ranked on one axis.
        direction (str): ``"general"`` or ``"domain"``.
        per_kind (bool): normalise within each kind of unit across the copies (every
            ``attn.q_proj.weight`` together, every ``sa_norm.scale`` together, ...), so that
            every kind spans ``[min_scale, 2]`` instead of the norms taking the top of one
            shared range (``unit_tuning.scoring=per_kind``). Overrides
            ``separate_norm_range``.

    Returns:
        dict[str, float]: unit name -> multiplier, in the order of ``importance``.

    Raises:
        ValueError: ``importance`` is empty or has a non-finite score, ``min_scale`` is not in
            ``[0, 2]``, or ``direction`` is unknown.
    """
    if not importance:
        raise ValueError("importance is empty: there are no unit scores to turn into lr scales")
    bad = {name: score for name, score in importance.items() if not _is_finite(score)}
    if bad:
        raise ValueError(f"importance has non-finite scores (NaN or inf): {bad}")
    if not _is_finite(min_scale) or not 0.0 <= min_scale <= 2.0:
        raise ValueError(f"min_scale={min_scale!r} must be in [0, 2]")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {list(DIRECTIONS)}")
    scores = {name: float(score) for name, score in importance.items()}
    if per_kind:
        scales = {}
        for kind in dict.fromkeys(_within_layer(name) for name in scores):
            subset = {name: s for name, s in scores.items() if _within_layer(name) == kind}
            scales.update(_scales_over(subset, min_scale, direction))
    elif not separate_norm_range:
        scales = _scales_over(scores, min_scale, direction)
    else:
        scales = {}
        for kind in ("matrix", "norm"):
            subset = {name: s for name, s in scores.items() if unit_kind(name) == kind}
            if subset:
                scales.update(_scales_over(subset, min_scale, direction))
    return {name: scales[name] for name in scores}


def _scales_over(scores: dict[str, float], min_scale: float, direction: str) -> dict[str, float]:
    lo, hi = min(scores.values()), max(scores.values())
    out: dict[str, float] = {}
    for name, score in scores.items():
        if hi == lo:
            scale = 1.0
        else:
            relative = (score - lo) / (hi - lo)
            scale = 2.0 * (1.0 - relative) if direction == "general" else 2.0 * relative
        out[name] = max(scale, min_scale)
    return out


def _within_layer(name: str) -> str:
    """``layers.27.attn.q_proj.weight`` -> ``attn.q_proj.weight``: the unit's kind."""
    return re.sub(r"^layers\.\d+\.", "", name)


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _lr_value(lr: float | torch.Tensor) -> float:
    return float(lr.item()) if isinstance(lr, torch.Tensor) else lr


def _write_lr(group: dict[str, Any], value: float) -> None:
    # torchao's low-bit AdamW keeps lr as a tensor and refuses a float: update it in place.
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


class UnitScaledScheduler:
    """Any torch LR scheduler, with a per-unit multiplier that never compounds (S2.3, S2.4).

    At every point each named param group's lr is ``unscaled · w_U``, where ``unscaled`` is
    the lr the inner scheduler computes for that group (kept in ``group["unscaled_lr"]``)
    and ``w_U`` the unit's current scale: for torchtune's cosine-with-warmup,
    ``base_lr · schedule(t) · w_U`` exactly. Scales are 1 until the first ``set_scales``.
    Fixed ``multipliers`` (a ``zero_post_norm`` copy's gains, ``expansion.gate_units``)
    multiply on top of the scales: ``unscaled · w_U · m_U``; they come from the config, so a
    resumed run passes them again rather than reading them from the checkpoint.

    Build it right after the inner scheduler, before any step (the constructor takes the
    groups' current lrs as unscaled). On resume, build both fresh and call
    ``load_state_dict``: it restores the unscaled lrs and scales itself, so it does not
    matter whether the optimizer state was loaded before or after.

    torchtune's ``training.get_lr`` refuses groups with different lrs: log ``base_lr()``
    (and ``lr_of(unit)``) instead.

    Args:
        optimizer (Optimizer): the optimizer, every param group with a unique ``"name"``
            (``unit_optimizer`` builds such groups).
        scheduler (torch.optim.lr_scheduler.LRScheduler): the schedule, built on
            ``optimizer``; any torch scheduler (``LambdaLR``, ``StepLR``, ``SequentialLR``,
            ``ReduceLROnPlateau`` …).
        multipliers (Mapping[str, float] | None): unit name -> fixed lr multiplier (finite,
            > 0); units not named have 1.

    Raises:
        ValueError: ``scheduler`` drives another optimizer, a group has no or a duplicate
            ``"name"``, or a multiplier names no unit or is not a positive number.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: Any,
        multipliers: Mapping[str, float] | None = None,
    ) -> None:
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError(
                "the lr scheduler was built on another optimizer: build it on the optimizer "
                "passed to UnitScaledScheduler"
            )
        names = [group.get("name") for group in optimizer.param_groups]
        unnamed = [i for i, name in enumerate(names) if not isinstance(name, str)]
        if unnamed:
            raise ValueError(
                f"param groups {unnamed} have no 'name': per-unit lrs need one named group "
                "per unit; build the optimizer with adept_components.optim.unit_optimizer"
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"param group names repeat: {duplicates}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._names: list[str] = names
        self._scales: dict[str, float] = dict.fromkeys(names, 1.0)
        multipliers = dict(multipliers or {})
        unknown = sorted(set(multipliers) - set(names))
        bad = {n: m for n, m in multipliers.items() if not _is_finite(m) or float(m) <= 0.0}
        if unknown or bad:
            raise ValueError(
                f"lr multipliers must name units of the optimizer with positive numbers; "
                f"unknown: {unknown[:5]}, bad: {bad}"
            )
        self.multipliers: dict[str, float] = {n: float(multipliers.get(n, 1.0)) for n in names}
        self.last_refresh_step: int | None = None
        self.history: list[dict[str, Any]] = []
        for group in optimizer.param_groups:
            group[UNSCALED_LR_KEY] = _lr_value(group["lr"])
        self._apply_scales()  # the multipliers hold from the first step

    @property
    def scales(self) -> dict[str, float]:
        """Current multiplier of every unit (a copy)."""
        return dict(self._scales)

    @property
    def last_epoch(self) -> int:
        """The inner scheduler's step counter."""
        return self.scheduler.last_epoch

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance the inner schedule one step and re-apply the unit scales.

        Args:
            *args (Any): passed to the inner ``step`` (e.g. the metric of
                ``ReduceLROnPlateau``).
            **kwargs (Any): passed to the inner ``step``.
        """
        groups = self.optimizer.param_groups
        for group in groups:
            _write_lr(group, group[UNSCALED_LR_KEY])
        self.scheduler.step(*args, **kwargs)
        for group in groups:
            group[UNSCALED_LR_KEY] = _lr_value(group["lr"])
        self._apply_scales()

    def set_scales(self, scales: Mapping[str, float], step: int) -> None:
        """Replace every unit's multiplier (a refresh, S2.4) and apply it to the current lr.

        Only ``group["lr"]`` changes: optimizer state (``exp_avg``, ``exp_avg_sq``, step
        counts) is never touched.

        Args:
            scales (Mapping[str, float]): unit name -> multiplier (``lr_scales``' output),
                exactly one per param group, each finite and ``>= 0``.
            step (int): optimizer steps completed at this refresh (recorded in ``history``).

        Raises:
            ValueError: a unit is missing or unknown, a scale is negative or non-finite, or
                ``step`` is negative.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r} must be a non-negative integer (optimizer steps)")
        self._check_units(scales, "scales")
        bad = {n: s for n, s in scales.items() if not _is_finite(s) or float(s) < 0.0}
        if bad:
            raise ValueError(f"scales must be finite and >= 0, got {bad}")
        self._scales = {name: float(scales[name]) for name in self._names}
        self.last_refresh_step = step
        self.history.append({"step": step, "scales": dict(self._scales)})
        self._apply_scales()

    def base_lr(self) -> float:
        """The unscaled lr of the schedule now, ``base_lr · schedule(t)`` (for logging).

        Returns:
            float: the common unscaled lr of the groups.

        Raises:
            RuntimeError: the groups' unscaled lrs differ (groups built with different base
                lrs); read ``lr_of`` per unit instead.
        """
        lrs = {group[UNSCALED_LR_KEY] for group in self.optimizer.param_groups}
        if len(lrs) != 1:
            raise RuntimeError(f"param groups have different unscaled lrs: {sorted(lrs)}")
        return lrs.pop()

    def lr_of(self, unit: str) -> float:
        """The lr a unit's param group runs at now (scaled and multiplied).

        Args:
            unit (str): the unit name, e.g. ``layers.27.attn.q_proj.weight``.

        Returns:
            float: its lr.

        Raises:
            ValueError: no group has that name.
        """
        for group in self.optimizer.param_groups:
            if group["name"] == unit:
                return _lr_value(group["lr"])
        close = difflib.get_close_matches(unit, self._names, n=3)
        raise ValueError(f"no param group named {unit!r}; closest: {close}")

    def get_last_lr(self) -> list[float]:
        """The lrs the groups run at now (scaled), in group order."""
        return [_lr_value(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: inner scheduler, scales, unscaled lrs, history.

        Returns:
            dict: with keys ``scheduler`` (the inner ``state_dict``), ``scales`` and
            ``unscaled_lrs`` (unit name -> float), ``last_refresh_step`` (int or None) and
            ``history`` (list of ``{"step": int, "scales": {unit: float}}``, one per refresh).
        """
        return {
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "scales": dict(self._scales),
            "unscaled_lrs": {g["name"]: g[UNSCALED_LR_KEY] for g in self.optimizer.param_groups},
            "last_refresh_step": self.last_refresh_step,
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` and set every group's lr to ``unscaled · scale``.

        Args:
            state_dict (Mapping[str, Any]): from ``state_dict``.

        Raises:
            ValueError: a key is missing, or the saved units differ from this optimizer's
                groups (a checkpoint of another expansion).
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"lr scheduler state lacks {missing}: not a UnitScaledScheduler state")
        self._check_units(state_dict["scales"], "the checkpoint's scales")
        self._check_units(state_dict["unscaled_lrs"], "the checkpoint's unscaled_lrs")
        self.scheduler.load_state_dict(copy.deepcopy(state_dict["scheduler"]))
        self._scales = {name: float(state_dict["scales"][name]) for name in self._names}
        for group in self.optimizer.param_groups:
            group[UNSCALED_LR_KEY] = state_dict["unscaled_lrs"][group["name"]]
        self.last_refresh_step = state_dict["last_refresh_step"]
        self.history = copy.deepcopy(list(state_dict["history"]))
        self._apply_scales()

    def _apply_scales(self) -> None:
        for group in self.optimizer.param_groups:
            name = group["name"]
            _write_lr(group, group[UNSCALED_LR_KEY] * self._scales[name] * self.multipliers[name])

    def _check_units(self, given: Mapping[str, Any], what: str) -> None:
        names = set(self._names)
        missing = [name for name in self._names if name not in given]
        unknown = [name for name in given if name not in names]
        if missing or unknown:
            raise ValueError(
                f"{what} must name exactly the optimizer's {len(names)} units; "
                f"missing: {missing[:5]}{' …' if len(missing) > 5 else ''}, "
                f"unknown: {unknown[:5]}{' …' if len(unknown) > 5 else ''}"
            )


@dataclasses.dataclass(frozen=True)
class RefreshPolicy:
    """When to re-score unit importance and replace the scales (spec S2.4).

    ``step`` counts *optimizer* steps completed, so a refresh always falls on an optimizer
    step boundary: the recipe calls ``due`` right after ``optimizer.step()`` (and the
    scheduler's step), never inside a gradient-accumulation window, whose partial gradients
    the probe pass would otherwise have to clear.

    Attributes:
        refresh_every (int): re-score every this many optimizer steps (default 500).
        refresh_at_start (bool): also score once before the first step (``due(0)``);
            otherwise the LR is uniform (w = 1) until step ``refresh_every``.

    Raises:
        ValueError: ``refresh_every`` is not a positive integer.
    """

    refresh_every: int = 500
    refresh_at_start: bool = False

    def __post_init__(self) -> None:
        every = self.refresh_every
        if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
            raise ValueError(
                f"refresh_every={every!r} must be a positive integer (optimizer steps between "
                "unit-importance refreshes)"
            )

    def due(self, step: int) -> bool:
        """Whether to refresh after ``step`` optimizer steps.

        Args:
            step (int): optimizer steps completed (0 = before training).

        Returns:
            bool: ``refresh_at_start`` at step 0, else whether ``refresh_every`` divides
            ``step``.

        Raises:
            ValueError: ``step`` is negative.
        """
        if step < 0:
            raise ValueError(f"step={step} must be >= 0 (optimizer steps completed)")
        if step == 0:
            return self.refresh_at_start
        return step % self.refresh_every == 0
