"""``_component_`` targets, checked before anything runs: importable, and given known arguments.

torchtune's ``config.instantiate`` finds a misspelt target or argument only when it builds it,
and reports it as an ``InstantiationError`` or ``TypeError`` traceback, sometimes after minutes
of loading. ``check_components`` walks the whole config first and turns each such mistake into
one line naming the field and the closest existing names.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, ListConfig

from adept_components.components import did_you_mean, import_component

# Arguments of torchtune's checkpointers that ours replaces by reading checkpoint_dir itself.
_TORCHTUNE_CHECKPOINTER_KEYS = {
    "checkpoint_files": "it reads every *.safetensors file of checkpoint_dir (and its index)",
    "model_type": "the model family comes from checkpoint_dir/config.json",
    "recipe_checkpoint": "resume_from_checkpoint=true finds the newest step_N in output_dir",
    "adapter_checkpoint": "method=lora writes its adapter beside the merged model",
}

# Sections whose arguments the plan checks itself (the optimizer's class gets its params and
# per-group settings from the recipe: ``OptimizerPlan``).
_OWN_ARGUMENT_CHECKS = {"optimizer"}


def check_components(cfg: DictConfig) -> None:
    """Every ``_component_`` of ``cfg`` (at any depth) imports, and takes the section's keys.

    Args:
        cfg (DictConfig): the whole run config.

    Raises:
        ValueError: ``<field>._component_: ...`` for a target that does not exist (with the
            closest names), or ``<field>.<key>: ...`` for a key its target does not accept.
    """
    for field, section in _sections(cfg, ""):
        path = section["_component_"]
        try:
            target = import_component(str(path))
        except ValueError as err:
            raise ValueError(f"{field}._component_: {err}") from None
        if field not in _OWN_ARGUMENT_CHECKS:
            _check_arguments(field, section, target, str(path))


def _sections(node: Any, field: str) -> list[tuple[str, DictConfig]]:
    """``(dotted field, section)`` for every mapping with a ``_component_`` key."""
    found = []
    if isinstance(node, DictConfig):
        if "_component_" in node and isinstance(node.get("_component_"), str):
            found.append((field, node))
        for key in node:
            found += _sections(node._get_node(key), f"{field}.{key}" if field else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            found += _sections(item, f"{field}[{i}]")
    return found


def _check_arguments(field: str, section: DictConfig, target: Any, path: str) -> None:
    """Each key of ``section`` is a parameter of ``target`` (unless it takes ``**kwargs``)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in section:
        if key == "_component_" or key in params:
            continue
        why = _TORCHTUNE_CHECKPOINTER_KEYS.get(str(key)) if field == "checkpointer" else None
        if why:
            raise ValueError(
                f"{field}.{key}: this project's checkpointer ({path}) does not take {key}: "
                f"{why}; remove {field}.{key}"
            )
        named = [n for n in params if n != "self"]
        raise ValueError(
            f"{field}.{key} is not an argument of {path} (arguments: {', '.join(named)})"
            + did_you_mean(str(key), named, field)
        )
