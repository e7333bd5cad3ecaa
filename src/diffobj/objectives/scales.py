"""One scale for diagnosis: Xu et al.'s unified VE / x0 view (their Table 1), and the eps scale.

Every Gaussian run reports its per-level loss as eps-MSE per dimension, whatever it predicts:
each prediction (eps, x0, v, EDM's F) is converted to eps_hat (diffobj.processes.gaussian), and
the optimal loss is in the same scale. In the VE view x̂ = z / alpha = x + σ̂ eps with
σ̂ = sigma / alpha = e^(-lam/2), and x0_hat = x̂ - σ̂ eps_hat, so for every schedule

    ||x0 - x0_hat||² = σ̂² ||eps - eps_hat||² = e^(-lam) ||eps - eps_hat||²,

which is the only conversion the diagnosis needs (the loss of another target is this x0 loss
times a fixed factor, the paper's Eqs. 3-5). Masked runs have one scale (cross-entropy in nats
per dimension): their x0 columns are missing (null).

A third scale compares runs of one process whatever their weighting or schedule: the ELBO
integrand in log-SNR (docs/science.md §1.2), ½·eps-MSE (Gaussian) or sigmoid(lam)·CE (masked),
per unit lam and in nats per dimension; its integral over lam is the ELBO's diffusion term.
"""

from __future__ import annotations

import numpy as np

from diffobj import processes

SCALES = ("eps", "x0")


def sigma_ve(log_snr: np.ndarray | float) -> np.ndarray:
    """σ̂ = sigma / alpha = e^(-lam/2): the VE noise level of a log-SNR."""
    return np.exp(-np.asarray(log_snr, dtype=float) / 2)


def eps_to_x0(loss_eps: np.ndarray | float, log_snr: np.ndarray | float) -> np.ndarray:
    """x0-MSE from eps-MSE at the same log-SNR (any schedule, any prediction)."""
    return np.asarray(loss_eps, dtype=float) * np.exp(-np.asarray(log_snr, dtype=float))


def interpolate_optimal(
    log_snr: np.ndarray, table_log_snr: np.ndarray, table_loss: np.ndarray, kind: str
) -> np.ndarray:
    """The optimal loss at ``log_snr`` from a table, in the table's (eps or nats) units.

    Gaussian: geometric (log-linear) in lam between two positive levels, which is the same in
    the eps and the x0 scale (they differ by the factor e^lam) and exact for both regimes of
    J*: e^lam · var at high noise, ~ e^-lam-like decay at low noise. Linear interpolation of
    the eps values overshoots at high noise by up to the ratio of neighbouring levels (on
    digits, levels 5 apart: an x0 gap of -2.9 where it is ~0). A segment with a zero end is
    linear in the x0 scale. Beyond the table the x0 value is held (J*_x0 saturates at the data
    variance). Masked: linear in lam, held at the ends.
    """
    lam = np.asarray(log_snr, dtype=float)
    xs, ys = np.asarray(table_log_snr, dtype=float), np.asarray(table_loss, dtype=float)
    order = np.argsort(xs)
    xs, ys = xs[order], np.clip(ys[order], 0.0, None)
    if not processes.get(kind).continuous:  # one scale: no x0 view (see the module doc)
        return np.interp(lam, xs, ys)
    x0 = eps_to_x0(ys, xs)
    linear = np.interp(lam, xs, x0)
    with np.errstate(divide="ignore"):
        geometric = np.exp(np.interp(lam, xs, np.log(x0)))
    right = np.clip(np.searchsorted(xs, lam), 1, len(xs) - 1)
    positive = (x0[right - 1] > 0) & (x0[right] > 0)
    return np.where(positive, geometric, linear) * np.exp(lam)
