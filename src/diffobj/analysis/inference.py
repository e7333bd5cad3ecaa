"""Seed-level inference: the t-interval of a mean over seeds, the paired t-test of per-seed
differences, Holm's step-down adjustment and the smallest difference a design detects.

The unit of replication is the training seed. A run's metric (its classifier FD, its NLL bound)
already carries the run's within-run noise (which samples were scored, which test images were
bounded), so the spread of the per-seed values holds both levels, each counted once; a t-interval
on k - 1 degrees of freedom is exact when the per-seed values are normal, whatever the ratio of
the two levels. Every function works along the last axis, so a simulation passes many studies at
once.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
POWER = 0.80


def mean_interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The t-interval (k - 1 degrees of freedom) of the mean over the last axis; nan for k < 2."""
    values = np.asarray(values, dtype=float)
    k = values.shape[-1]
    if k < 2:
        nan = np.full(values.shape[:-1], np.nan)
        return nan, nan
    mean = values.mean(axis=-1)
    half = stats.t.ppf((1 + level) / 2, k - 1) * values.std(axis=-1, ddof=1) / np.sqrt(k)
    return mean - half, mean + half


def paired_p(differences: np.ndarray) -> np.ndarray:
    """Two-sided p of the paired t-test that the per-seed differences (last axis) have mean 0.

    Identical differences are decided by their sign alone: p = 0 when they are not zero (no seed
    disagrees), 1 when they are (no difference at all)."""
    differences = np.asarray(differences, dtype=float)
    with warnings.catch_warnings():  # constant rows: scipy warns, and they are decided below
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_1samp(differences, 0.0, axis=-1).pvalue
    constant = np.ptp(differences, axis=-1) == 0
    return np.where(constant, np.where(differences[..., 0] == 0, 1.0, 0.0), p)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values over the last axis: rejecting where the adjusted p is at
    most alpha keeps the family-wise error rate at alpha under any dependence between the tests."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    adjusted = np.empty_like(ranked)
    np.put_along_axis(adjusted, order, ranked, axis=-1)
    return adjusted


def paired_power(effect: float, sd: float, k: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level alpha with k seeds, for a true mean
    difference ``effect`` and a per-seed standard deviation ``sd`` of the differences."""
    df = k - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / sd * np.sqrt(k)
    # scipy's far lower tail of the noncentral t can come back nan where it is ~0
    wrong_side = np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0)
    return float(stats.nct.sf(crit, df, nc) + wrong_side)


def detectable_difference(sd: float, k: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference the paired t-test finds with the given power (k seeds,
    differences of standard deviation ``sd``); inf when there are too few seeds to test."""
    if k < 2 or not np.isfinite(sd):
        return float("inf")
    if sd == 0:
        return 0.0
    upper = sd
    while paired_power(upper, sd, k, alpha) < power:  # bracket the root before solving
        upper *= 2
    return float(optimize.brentq(lambda d: paired_power(d, sd, k, alpha) - power, 0.0, upper))
