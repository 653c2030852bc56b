"""Layer and unit importance on general-domain probe data (spec S1.2, S1.3, S2.2), and the
data-free weight SNR of Spectrum."""

from adept_components.expansion import check_selected_layers
from adept_components.importance.layer_importance import (
    IMPORTANCE_METHODS,
    Batch,
    GradientImportance,
    ImportanceMethod,
    MaskOutLosses,
    grad_cumulative_importance,
    layer_importance,
    mask_out_importance,
    mask_out_losses,
    probe_loss,
    rank_importance,
    select_layers,
)
from adept_components.importance.profile import (
    HEATMAP_FILE,
    LAYERS_FILE,
    PROFILE_FILE,
    LayerProfile,
    ModelIdentity,
    check_profile_matches,
    model_identity,
    profile_layers,
    read_profile,
    write_profile,
)
from adept_components.importance.snr import (
    check_snr_applies,
    matrix_snr,
    module_snr,
    snr_layer_scores,
    spectrum_selection,
)
from adept_components.importance.unit_importance import (
    row_importance,
    unit_conflict,
    unit_importance,
)

__all__ = [
    "HEATMAP_FILE",
    "IMPORTANCE_METHODS",
    "LAYERS_FILE",
    "PROFILE_FILE",
    "Batch",
    "GradientImportance",
    "ImportanceMethod",
    "LayerProfile",
    "MaskOutLosses",
    "ModelIdentity",
    "check_profile_matches",
    "check_selected_layers",
    "check_snr_applies",
    "grad_cumulative_importance",
    "layer_importance",
    "mask_out_importance",
    "mask_out_losses",
    "matrix_snr",
    "model_identity",
    "module_snr",
    "probe_loss",
    "profile_layers",
    "rank_importance",
    "row_importance",
    "read_profile",
    "select_layers",
    "snr_layer_scores",
    "spectrum_selection",
    "unit_conflict",
    "unit_importance",
    "write_profile",
]
