"""Scaling laws as Xu et al. fit them: the ELBO integral per run, and power laws per noise level.

- ``elbo_integral``: the continuous-time ELBO of a per-level loss curve in log-SNR,
  Gaussian ½ ∫ E[eps-MSE | lam] dlam, masked ∫ sigmoid(lam) E[CE | lam] dlam (docs/science.md §1.2),
  by the trapezoid rule over the given levels.
- ``per_level_fits``: at each noise level, J_σ(F) = J*_σ + a F^(-b) against model size F, fitted
  as a line in log-log after subtracting the known J*_σ, next to the raw fit J_σ = a F^(-b)
  (the paper's Fig. 3b, 7, 8): exponent b with its 95% t-interval, Pearson ρ of the log-log
  points, and R² of the fitted J on J itself (so raw and subtracted are compared on one footing).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
from torch import nn

from diffobj import processes
from diffobj.analysis.figures import fit_power_law


def elbo_integral(kind: str, log_snr: np.ndarray, loss: np.ndarray) -> float:
    """The ELBO-weighted integral of a per-level loss over the levels' log-SNR range."""
    order = np.argsort(log_snr)
    lam, values = np.asarray(log_snr, float)[order], np.asarray(loss, float)[order]
    return float(np.trapezoid(processes.get(kind).elbo_weight(lam) * values, lam))


def forward_flops(model: nn.Module, kind: str, image_shape: tuple[int, int, int]) -> float:
    """FLOPs of one forward pass on one image (C, H, W), counted by torch's FlopCounterMode
    (matmuls and convolutions: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *image_shape), dtype=processes.get(kind).input_dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(1))
    return float(counter.get_total_flops())


def training_flops(forward: float, images_seen: int) -> float:
    """Training compute: forward + backward ≈ 3 forward passes per image seen (Kaplan et al.)."""
    return 3.0 * forward * images_seen


def power_law_fit(size: np.ndarray, loss: np.ndarray, offset: float = 0.0) -> dict[str, float]:
    """J = offset + a F^(-b), fitted in log-log on J - offset: b, its 95% interval, ρ, R²."""
    size, loss = np.asarray(size, float), np.asarray(loss, float)
    excess = loss - offset
    nan = dict.fromkeys(("b", "b_lo", "b_hi", "a", "pearson_r", "r2"), math.nan)
    # a level where every run has one size (or compute) has no slope to fit
    if len(size) < 3 or len(np.unique(size)) < 2 or not (excess > 0).all():
        return {**nan, "n": len(size)}
    fit = fit_power_law(size, excess)
    predicted = offset + fit["beta"] * size ** fit["alpha"]
    total = ((loss - loss.mean()) ** 2).sum()
    r2 = 1 - ((loss - predicted) ** 2).sum() / total if total > 0 else math.nan
    return {
        "b": -fit["alpha"],
        "b_lo": -fit["alpha_hi"],
        "b_hi": -fit["alpha_lo"],
        "a": fit["beta"],
        "pearson_r": float(np.corrcoef(np.log(size), np.log(excess))[0, 1]),
        "r2": float(r2),
        "n": len(size),
    }


def per_level_fits(points: pl.DataFrame, size: str = "size") -> pl.DataFrame:
    """One row per (kind, log_snr, fit): raw and J*-subtracted power laws against ``size``.

    ``points``: columns kind, log_snr, ``size`` (parameters or compute), model_loss,
    optimal_loss; one row per run and level (the gap table joined with each run's size).
    """
    rows = []
    for (kind, lam), sub in points.group_by(["kind", "log_snr"], maintain_order=True):
        sub = sub.sort(size)
        size_values, loss = sub[size].to_numpy(), sub["model_loss"].to_numpy()
        optimum = float(sub["optimal_loss"].mean())
        for fit, offset in (("raw", 0.0), ("minus_optimal", optimum)):
            rows.append(
                {"kind": kind, "log_snr": lam, "against": size, "fit": fit}
                | {"optimal_loss": optimum}
                | power_law_fit(size_values, loss, offset)
            )
    return pl.DataFrame(rows)
