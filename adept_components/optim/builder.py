"""S2.1/S2.3 the optimizer builder: any optimizer class over one param group per unit.

The config names the optimizer class itself, with its keyword arguments, as torchtune's
recipes do::

    optimizer:
      _component_: torch.optim.AdamW   # or torchao.optim.AdamW8bit / AdamW4bit / AdamWFp8
      lr: 1e-4
      weight_decay: 0.0

The recipe resolves the class (``resolve_optimizer_class``) and calls ``unit_optimizer`` with
the model and the trained layers, so every unit gets its own named group. torchao's low-bit
AdamW variants take the same groups: ``torch.optim.Optimizer`` keeps any extra group key
(``name``, later ``unscaled_lr``), and torchao only turns each group's ``lr`` into a tensor,
which ``UnitScaledScheduler`` updates in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

from adept_components.components import import_component
from adept_components.optim.unit_groups import unit_param_groups

_EXAMPLES = "torch.optim.AdamW or torchao.optim.AdamW8bit"


def resolve_optimizer_class(path: str | type) -> type[Optimizer]:
    """Import an optimizer class from its dotted path.

    Args:
        path (str | type): e.g. ``"torch.optim.AdamW"``, or the class itself.

    Returns:
        type[Optimizer]: the class.

    Raises:
        ValueError: the path cannot be imported, or it is not a ``torch.optim.Optimizer``
            subclass.
    """
    if isinstance(path, type):
        cls: Any = path
    else:
        cls = _import_dotted(path)
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(
            f"{path!r} is {cls!r}, not a torch.optim.Optimizer subclass; use an optimizer "
            f"class such as {_EXAMPLES}"
        )
    return cls


def _import_dotted(path: str) -> Any:
    try:
        return import_component(path)
    except ValueError as err:
        raise ValueError(f"{err}; use e.g. {_EXAMPLES}") from None


def unit_optimizer(
    model: nn.Module,
    trainable_layers: Sequence[int],
    optimizer_cls: str | type = "torch.optim.AdamW",
    lr: float = 1e-4,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """An optimizer with one named param group per trainable unit (spec S2.1, S2.3).

    Every group starts at the same ``lr``; ``UnitScaledScheduler`` later scales each one.
    Build it after ``freeze_all_but`` and after FSDP sharding / activation checkpointing,
    since groups are collected from the parameters the model holds at that point.

    Args:
        model (nn.Module): the (expanded, frozen, possibly sharded) torchtune decoder.
        trainable_layers (Sequence[int]): the layers that train, e.g.
            ``ExpansionMetadata.copy_positions``.
        optimizer_cls (str | type): dotted path of a ``torch.optim.Optimizer`` subclass
            (``torch.optim.AdamW``, ``torchao.optim.AdamW8bit``, ``AdamW4bit``,
            ``AdamWFp8``), or the class.
        lr (float): base learning rate, ``> 0``.
        **optimizer_kwargs (Any): passed to the class (``weight_decay``, ``betas``, ``eps``,
            ``fused`` …); a list ``betas`` from YAML becomes a tuple.

    Returns:
        Optimizer: the optimizer; each group has a ``"name"`` key (the unit name).

    Raises:
        ValueError: a bad ``optimizer_cls`` (see ``resolve_optimizer_class``), a non-positive
            ``lr``, keyword arguments the class does not accept, or no trainable unit (see
            ``unit_param_groups``).
    """
    return build_optimizer(
        unit_param_groups(model, trainable_layers), optimizer_cls, lr, **optimizer_kwargs
    )


def build_optimizer(
    groups: list[dict[str, Any]],
    optimizer_cls: str | type = "torch.optim.AdamW",
    lr: float = 1e-4,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """An optimizer over given param groups (a ``TrainableSet.param_groups``).

    Args:
        groups (list[dict]): param groups, each ``{"params": [...], ...}``.
        optimizer_cls (str | type): dotted path of a ``torch.optim.Optimizer`` subclass, or
            the class.
        lr (float): base learning rate, ``> 0``.
        **optimizer_kwargs (Any): passed to the class; a list ``betas`` becomes a tuple.

    Returns:
        Optimizer: the optimizer.

    Raises:
        ValueError: a bad ``optimizer_cls``, a non-positive ``lr`` or keyword arguments the
            class does not accept.
    """
    cls = resolve_optimizer_class(optimizer_cls)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise ValueError(f"lr={lr!r} must be a positive number")
    if isinstance(optimizer_kwargs.get("betas"), list):
        optimizer_kwargs["betas"] = tuple(optimizer_kwargs["betas"])
    try:
        return cls(groups, lr=float(lr), **optimizer_kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise ValueError(
            f"{cls.__module__}.{cls.__qualname__} does not accept the optimizer arguments "
            f"{sorted(optimizer_kwargs)} from the config: {err}"
        ) from err
