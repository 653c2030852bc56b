"""Dotted ``_component_`` paths: import one, or say which existing names are closest.

``config.components.check_components`` uses it on every section of a run config, the
optimizer builder on its class; neither needs OmegaConf here.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from typing import Any


def import_component(path: str) -> Any:
    """The object a dotted ``_component_`` path names.

    Args:
        path (str): e.g. ``"adept_components.models.qwen3_8b"`` or ``"torch.optim.AdamW"``.

    Returns:
        Any: the class or function.

    Raises:
        ValueError: not a dotted path, a module that fails to import for another reason than
            being absent, or a name that does not exist; the message names the closest
            existing names.
    """
    parts = str(path).split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{path!r} is not a dotted path (module.name)")
    # The longest importable module prefix, then attributes (allows nested classes).
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or f"{module_name}.".startswith(f"{err.name}."):
                continue  # no such module: try a shorter prefix
            raise ValueError(
                f"{path!r}: importing {module_name} failed: {err}; install the missing package"
            ) from err
        prefix = module_name
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                raise ValueError(
                    f"{path!r} cannot be imported: {prefix} has no {attr!r}"
                    + did_you_mean(attr, names_in(obj), prefix)
                )
            obj, prefix = getattr(obj, attr), f"{prefix}.{attr}"
        return obj
    # Installed top-level modules, and those imported already (an editable install's
    # packages are found by an import hook that pkgutil does not list).
    top = {m.name for m in pkgutil.iter_modules()} | {n.split(".")[0] for n in sys.modules}
    raise ValueError(
        f"{path!r} cannot be imported: check the spelling and that its package is installed; "
        f"no module {parts[0]!r}"
        + did_you_mean(parts[0], top, "", rest=".".join(parts[1:]), count=1)
    )


def names_in(obj: Any) -> set[str]:
    """Public attributes of a module or class, and a package's submodules."""
    names = {n for n in dir(obj) if not n.startswith("_")}
    if hasattr(obj, "__path__"):
        names |= {m.name for m in pkgutil.iter_modules(obj.__path__)}
    return names


def did_you_mean(name: str, candidates: Any, prefix: str, rest: str = "", count: int = 3) -> str:
    """``"; did you mean A or B?"`` for the ``count`` names closest to ``name`` (or "")."""
    close = difflib.get_close_matches(name, sorted(candidates), n=count, cutoff=0.6)
    if not close:
        return ""
    joined = [".".join(p for p in (prefix, c, rest) if p) for c in close]
    return "; did you mean " + " or ".join(joined) + "?"
