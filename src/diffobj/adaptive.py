"""Former name of diffobj.densities (kept so existing imports work)."""

from diffobj.densities import (  # noqa: F401 - re-exports
    AdaptiveCorrected,
    bin_centres,
    bin_edges,
    bin_index,
    evaluate_error,
    lam_weight,
    level_at,
    read_optimal_loss,
)
from diffobj.densities import AdaptiveCorrected as AdaptiveDensity  # noqa: F401
