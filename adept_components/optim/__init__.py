"""Stage 2 optimisation: unit param groups (S2.1), per-unit scaled LRs (S2.3), refresh (S2.4),
and per-row LRs."""

from adept_components.optim.builder import (
    build_optimizer,
    resolve_optimizer_class,
    unit_optimizer,
)
from adept_components.optim.plot import plot_scales
from adept_components.optim.row_scales import RowLRScaler, row_lr_scales
from adept_components.optim.unit_groups import (
    clean_param_name,
    unit_importance_by_name,
    unit_kind,
    unit_name,
    unit_param_groups,
)
from adept_components.optim.unit_lr import (
    RefreshPolicy,
    UnitScaledScheduler,
    lr_scales,
)

__all__ = [
    "RefreshPolicy",
    "RowLRScaler",
    "build_optimizer",
    "UnitScaledScheduler",
    "clean_param_name",
    "lr_scales",
    "plot_scales",
    "resolve_optimizer_class",
    "row_lr_scales",
    "unit_importance_by_name",
    "unit_kind",
    "unit_name",
    "unit_optimizer",
    "unit_param_groups",
]
