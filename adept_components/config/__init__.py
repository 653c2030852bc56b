"""Everything that knows about OmegaConf: config files and overrides, and the run plan.

``loading`` turns ``--config NAME_OR_PATH key=value ...`` into a config; ``plan`` turns the
config of ``adept_cpt`` into the typed, checked ``RunPlan`` the recipe reads.
"""

from adept_components.config.loading import (
    ASSET_PACKAGE,
    CONFIG_PACKAGE,
    ConfigError,
    apply_overrides,
    asset_path,
    available_configs,
    check_int,
    check_positive_int,
    check_run_fields,
    config_description,
    config_dir,
    config_recipe,
    load_config,
    named_errors,
    resolve_config,
    resolved_config,
    user_errors,
)
from adept_components.config.plan import RunPlan

__all__ = [
    "ASSET_PACKAGE",
    "CONFIG_PACKAGE",
    "ConfigError",
    "RunPlan",
    "apply_overrides",
    "asset_path",
    "available_configs",
    "check_int",
    "check_positive_int",
    "check_run_fields",
    "config_description",
    "config_dir",
    "config_recipe",
    "load_config",
    "named_errors",
    "resolve_config",
    "resolved_config",
    "user_errors",
]
