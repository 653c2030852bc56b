"""S2.1 units: one optimizer param group per trainable parameter tensor of the copies.

A *unit* is one parameter tensor of a trainable decoder layer, named as in the bare model's
``state_dict`` (``layers.27.attn.q_proj.weight``). Qwen3 layers have 11 units (q, k, v and
output projections, q_norm, k_norm, w1/gate, w2/down, w3/up, sa_norm, mlp_norm), Llama layers
9 (no q/k norms), Gemma 3 layers 13 (Qwen3's and the two post-branch norms). Each unit becomes
its own param group, so its learning rate can be scaled on its own (S2.3); the reference
code's two decay/no-decay groups are the bug we avoid.

Groups are built *by name* from ``model.named_parameters()``: FSDP2's ``fully_shard`` swaps
every parameter object for a DTensor, so groups must be built after sharding, and the
wrappers that activation checkpointing, FSDP1 and ``torch.compile`` insert
(``_checkpoint_wrapped_module.``, ``_fsdp_wrapped_module.``, ``_orig_mod.``) are stripped so
a unit keeps one name whatever wraps the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import nn

from adept_components.expansion import check_selected_layers
from adept_components.models.family import ALL_NORM_MODULES

UnitKind = Literal["norm", "matrix"]
# Path segments that wrappers insert into parameter names; none is part of a unit's name.
WRAPPER_SEGMENTS: tuple[str, ...] = (
    "_checkpoint_wrapped_module",
    "_fsdp_wrapped_module",
    "_orig_mod",
)
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.")


def clean_param_name(name: str) -> str:
    """A parameter name with every wrapper segment removed.

    Args:
        name (str): a name from ``named_parameters()``, e.g.
            ``layers.3._checkpoint_wrapped_module.attn.q_proj.weight``.

    Returns:
        str: the bare model's name, e.g. ``layers.3.attn.q_proj.weight``.
    """
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def unit_kind(name: str) -> UnitKind:
    """Whether a unit is a norm scale or a matrix (S2.3 ``separate_norm_range``).

    A unit is a norm when the module owning it is a norm: one of the families' norm modules
    (``models.family``: ``sa_norm``, ``mlp_norm``, ``attn.q_norm``, ``attn.k_norm`` and
    Gemma's post-branch ``sa_scale``/``mlp_scale``; torchtune's norm parameter is ``scale``)
    or any module whose name ends with ``norm``. Every other unit (projections, MLP weights)
    is a matrix.

    Args:
        name (str): a unit name such as ``layers.27.attn.q_norm.scale``.

    Returns:
        str: ``"norm"`` or ``"matrix"``.
    """
    parts = clean_param_name(name).split(".")
    if len(parts) < 2:
        return "matrix"
    owner = parts[-2]
    return "norm" if owner in ALL_NORM_MODULES or owner.endswith("norm") else "matrix"


def unit_name(layer: int, local_name: str) -> str:
    """The unit name of a parameter given its layer index and its name inside the layer.

    Args:
        layer (int): decoder layer index in the (expanded) model.
        local_name (str): the name inside the layer, e.g. ``attn.q_proj.weight``; wrapper
            segments are stripped.

    Returns:
        str: e.g. ``layers.27.attn.q_proj.weight``.
    """
    return clean_param_name(f"layers.{layer}.{local_name}")


def unit_importance_by_name(
    unit_scores: Mapping[int, Mapping[str, float]], layers: Sequence[int]
) -> dict[str, float]:
    """Flatten per-layer unit scores (as ``grad_cumulative_importance`` returns them) to units.

    Args:
        unit_scores (Mapping[int, Mapping[str, float]]): layer index -> name inside the layer
            -> S2.2 score.
        layers (Sequence[int]): the layers whose units are kept (the trainable copies).

    Returns:
        dict[str, float]: unit name -> score, the input of ``lr_scales``.

    Raises:
        ValueError: a layer of ``layers`` has no scores.
    """
    missing = [layer for layer in layers if layer not in unit_scores]
    if missing:
        raise ValueError(
            f"unit_scores has no scores for layers {missing} (scored: {sorted(unit_scores)})"
        )
    return {
        unit_name(layer, local): float(score)
        for layer in layers
        for local, score in unit_scores[layer].items()
    }


def unit_param_groups(model: nn.Module, trainable_layers: Sequence[int]) -> list[dict[str, Any]]:
    """One param group per trainable unit of the given decoder layers (spec S2.1).

    Each group is ``{"params": [tensor], "name": unit_name}``, in model order. Parameters
    with ``requires_grad=False`` are left out. Call it on the model the optimizer will see:
    after ``freeze_all_but`` and after FSDP sharding and activation checkpointing.

    Args:
        model (nn.Module): a torchtune decoder, possibly wrapped (checkpointing, FSDP2,
            ``torch.compile``).
        trainable_layers (Sequence[int]): indices of the layers whose units train (the
            copies, ``ExpansionMetadata.copy_positions``).

    Returns:
        list[dict]: the param groups, to pass to an optimizer's constructor.

    Raises:
        ValueError: ``trainable_layers`` is empty, repeats a layer or names no layer of the
            model; no unit is trainable ("a model with no trainable copies") or one of the
            layers has none; or parameters outside ``trainable_layers`` require grad (they
            would silently not train).
    """
    layers = list(trainable_layers)
    check_selected_layers(layers, len(model.layers), field="trainable_layers", expanding=False)
    wanted = set(layers)
    groups: list[dict[str, Any]] = []
    stray: list[str] = []
    for raw_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = clean_param_name(raw_name)
        match = _LAYER_NAME.match(name)
        if match and int(match.group(1)) in wanted:
            groups.append({"params": [param], "name": name})
        else:
            stray.append(name)
    if not groups:
        raise ValueError(
            f"no trainable parameter in trainable_layers={layers}: a model with no trainable "
            "copies cannot be optimised; call freeze_all_but(model, metadata.copy_positions) "
            "(it unfreezes the copies) before building the optimizer"
        )
    empty = sorted(wanted - {int(_LAYER_NAME.match(g["name"]).group(1)) for g in groups})
    if empty:
        raise ValueError(
            f"trainable_layers={layers} but layers {empty} have no trainable parameter: "
            "call freeze_all_but(model, trainable_layers) before building the optimizer"
        )
    if stray:
        shown = ", ".join(stray[:5]) + (f" … ({len(stray)} in all)" if len(stray) > 5 else "")
        raise ValueError(
            f"parameters outside trainable_layers={layers} require grad but would not be "
            f"optimised: {shown}; freeze them (freeze_all_but(model, trainable_layers)) or add "
            "their layers to trainable_layers"
        )
    return groups
