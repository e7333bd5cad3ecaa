"""Gap versus sample quality per noise level (Xu et al. Fig. 2b analogue).

Across the runs of an experiment, at each log-SNR bin centre: the correlation of the per-level
gap (model loss − optimal loss, eps or x0 scale) with a run-level quality metric (FID, or the
classifier FD on small data). Pearson r with a 95% interval from Fisher's z (needs ≥ 4 runs),
and Spearman's rank correlation. The paper reports the gap near σ* negatively correlated with
FID and just below σ* positively correlated (docs/science.md §3.4).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl


def correlation(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Pearson r, its Fisher-z interval, and Spearman's rho of paired finite values."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    out = dict.fromkeys(("pearson_r", "r_lo", "r_hi", "spearman_rho"), math.nan)
    if n < 3 or x.std() == 0 or y.std() == 0:
        return {**out, "n": n}
    r = float(np.corrcoef(x, y)[0, 1])
    out.update(pearson_r=r, spearman_rho=float(stats.spearmanr(x, y).statistic))
    if n > 3 and abs(r) < 1:
        half = stats.norm.ppf((1 + level) / 2) / math.sqrt(n - 3)
        out.update(r_lo=math.tanh(math.atanh(r) - half), r_hi=math.tanh(math.atanh(r) + half))
    return {**out, "n": n}


def gap_quality(
    gap: pl.DataFrame, evaluation: pl.DataFrame, metric: str = "fd_classifier", scale: str = "eps"
) -> pl.DataFrame:
    """One row per (kind, log_snr): the correlation across runs of the gap with ``metric``."""
    column = "gap" if scale == "eps" else "gap_x0"
    joined = gap.join(evaluation.select("run_id", metric), on="run_id", how="inner")
    rows = []
    for (kind, lam), sub in joined.group_by(["kind", "log_snr"], maintain_order=True):
        stats = correlation(sub[column].to_numpy(), sub[metric].to_numpy())
        rows.append({"kind": kind, "log_snr": lam, "metric": metric, "scale": scale} | stats)
    return pl.DataFrame(rows).sort("kind", "log_snr")
