"""Config names, files and command-line overrides for ``tune run adept_cpt``.

torchtune's ``tune run`` resolves ``--config NAME`` only for its own recipes; for ours the
value arrives verbatim, so a bare name is resolved here to a YAML shipped in the package.
torchtune's parser also accepts unknown override keys silently and crashes on ``a=b=c``;
a typo in a 10-hour run should fail in a second instead, so overrides are checked here.
This is the one module of ``adept_components`` that knows about OmegaConf.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigIndexError, ConfigKeyError

CONFIG_PACKAGE = "adept_components.recipe_configs"
ASSET_PACKAGE = "adept_components.assets"
_MISSING = object()
T = TypeVar("T")


def asset_path(relative: str) -> str:
    """Absolute path of a file shipped in ``adept_components/assets`` (the demo model and text).

    Registered as the OmegaConf resolver ``${adept_asset:demo/base_model}`` so shipped configs
    work from any directory and from wheel or editable installs alike.
    """
    return str(Path(str(resources.files(ASSET_PACKAGE))) / relative)


OmegaConf.register_resolver("adept_asset", asset_path, replace=True)


class ConfigError(ValueError):
    """A config or command line the recipe cannot run; the message says what to change."""


def config_dir() -> Path:
    """Directory holding the YAML configs shipped with the installed package."""
    return Path(str(resources.files(CONFIG_PACKAGE)))


def available_configs() -> list[str]:
    """Names of the shipped configs (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def config_description(name: str) -> str:
    """First comment line of a shipped config: what it does."""
    for line in resolve_config(name).read_text().splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.lstrip("# ").strip()
    return ""


def config_recipe(name: str) -> str:
    """The recipe a shipped config is for, from its ``tune run RECIPE --config NAME`` line."""
    match = re.search(
        rf"tune run (\S+) --config {re.escape(name)}\b", resolve_config(name).read_text()
    )
    return match.group(1) if match else "adept_cpt"


def resolve_config(name_or_path: str) -> Path:
    """Turn ``--config`` into a YAML file: an existing path, else a shipped config name.

    Args:
        name_or_path (str): ``qwen3_8b_medical`` or ``./my_run.yaml``.

    Returns:
        Path: the YAML file.

    Raises:
        ConfigError: neither a file nor a shipped name; the message lists the names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = config_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"--config {name_or_path!r} is neither a file nor a shipped config. "
        f"Shipped configs: {', '.join(available_configs())} (see `adept-cpt ls`)"
    )


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply ``key=value`` overrides, refusing keys the config does not have.

    ``+key=value`` adds a key that is not in the YAML; ``~key`` deletes one. Unknown keys are
    caught by OmegaConf's struct mode, on only while the overrides are applied.

    Args:
        cfg (DictConfig): the loaded YAML.
        overrides (list[str]): command-line items after ``--config X``.

    Returns:
        DictConfig: the merged config.

    Raises:
        ConfigError: a malformed item or an unknown key (with close matches).
    """
    OmegaConf.set_struct(cfg, True)
    try:
        for item in overrides:
            _apply_override(cfg, item)
    finally:
        OmegaConf.set_struct(cfg, False)
    return cfg


def _apply_override(cfg: DictConfig, item: str) -> None:
    if item.startswith("~"):
        key = item[1:]
        if OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is _MISSING:
            raise _unknown_key(cfg, key, item)
        parent, _, leaf = key.rpartition(".")
        with open_dict(cfg):
            del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        return
    key, sep, value = item.partition("=")
    if not sep or not key or "=" in value:
        raise ConfigError(
            f"malformed override {item!r}: write key=value with exactly one '=' "
            "(e.g. batch_size=4), +key=value to add a key, ~key to remove one"
        )
    adding = key.startswith("+")
    key = key.lstrip("+")
    # Parse the value as YAML (numbers, lists, null, interpolations), then set it by path:
    # unlike a merge of a dotlist, a path may index into a list (probe.parts.0.num_samples).
    parsed = OmegaConf.from_dotlist([f"value={value}"])._get_node("value")
    try:
        with open_dict(cfg) if adding else contextlib.nullcontext():
            OmegaConf.update(cfg, key, parsed, merge=True, force_add=adding)
    except (ConfigAttributeError, ConfigIndexError, ConfigKeyError):
        raise _unknown_key(cfg, key, item) from None


def load_config(argv: list[str], recipe: str = "adept_cpt") -> DictConfig:
    """Parse ``--config NAME_OR_PATH [overrides…]`` into a config.

    Args:
        argv (list[str]): the recipe's command line, without the program name.
        recipe (str): the recipe parsing it, named in the error for a missing ``--config``
            with the shipped configs that are for it.

    Returns:
        DictConfig: the config with overrides applied (interpolations unresolved).

    Raises:
        ConfigError: no ``--config``, unknown name, bad YAML or a bad override.
    """
    if "--config" not in argv or argv.index("--config") == len(argv) - 1:
        shipped = [name for name in available_configs() if config_recipe(name) == recipe]
        raise ConfigError(
            f"missing --config: run `tune run {recipe} --config NAME_OR_PATH [key=value ...]` "
            f"(shipped configs: {', '.join(shipped)})"
        )
    i = argv.index("--config")
    path = resolve_config(argv[i + 1])
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return apply_overrides(cfg, argv[:i] + argv[i + 2 :])


def resolved_config(argv: list[str], recipe: str) -> DictConfig:
    """``load_config``, then every ``${...}`` interpolation resolved.

    Args:
        argv (list[str]): ``--config NAME_OR_PATH [key=value ...]``.
        recipe (str): the recipe parsing it (see ``load_config``).

    Returns:
        DictConfig: the resolved config.

    Raises:
        ConfigError: what ``load_config`` raises, or an interpolation that fails.
    """
    cfg = load_config(argv, recipe)
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise ConfigError(f"config interpolation failed: {e}") from None
    return cfg


def check_run_fields(cfg: DictConfig) -> None:
    """The fields every recipe shares: ``output_dir`` not a file, ``dtype``, ``device``.

    Raises:
        ConfigError: naming the field and the fix.
    """
    import torch

    output_dir = Path(str(cfg.output_dir)).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir={str(output_dir)!r} is a file; give a directory path")
    if cfg.dtype not in ("fp32", "bf16"):
        raise ConfigError(f"dtype={cfg.dtype!r}; use fp32 or bf16")
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r}; use cpu or cuda")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but no CUDA GPU is visible; use device=cpu")


def check_positive_int(cfg: DictConfig, key: str, required: bool = True) -> None:
    """``cfg[key]`` is an integer >= 1 (or, when not ``required``, absent or null).

    Raises:
        ConfigError: naming the key and its value.
    """
    value = cfg.get(key)
    if value is not None or required:
        check_int(value, key)


def check_int(value: Any, field: str, minimum: int = 1, why: str = "") -> int:
    """``value`` is an integer (not a bool) of at least ``minimum``.

    Args:
        value (Any): the config value.
        field (str): its name as the YAML spells it, for the message.
        minimum (int): 1 (a positive integer) or 0 (a non-negative one).
        why (str): what the number counts, appended to the message.

    Returns:
        int: ``value``.

    Raises:
        ConfigError: ``field=value must be a positive integer`` (or non-negative).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ConfigError(f"{field}={value!r} must be {kind} integer{why}")
    return value


def named_errors(field: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``; a user error (bad file, bad data) names ``field`` first.

    Raises:
        ConfigError: the error's message, after ``field: `` unless it starts with the field.
    """
    try:
        return call(*args, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        message = str(e)
        raise ConfigError(message if message.startswith(field) else f"{field}: {message}") from None


@contextlib.contextmanager
def user_errors(program: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn user-facing errors into one line on stderr and exit status 1.

    ``ADEPT_DEBUG=1`` re-raises them with their traceback.

    Args:
        program (str): the name the line starts with (``adept_cpt: error: ...``).
        *errors (type[BaseException]): further exception types that are the user's to fix
            (``ValueError`` and ``FileNotFoundError``, ``ConfigError`` among them, always are).
    """
    try:
        yield
    except (ValueError, FileNotFoundError, *errors) as e:
        if os.environ.get("ADEPT_DEBUG"):
            raise
        print(f"{program}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _unknown_key(cfg: DictConfig, key: str, item: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(
        f"override {item!r}: the config has no key {key!r}.{hint} "
        f"Use +{key}=... to add a new key on purpose."
    )


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items_ex(resolve=False):
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig):
            keys.extend(_all_keys(v, f"{full}."))
    return keys
