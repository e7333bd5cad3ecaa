"""The estimator study: bias and variance of SNIS / DOL / cDOL against the exact estimator on
the same queries, per noise level and subset size (Xu et al. 2025, Fig. 1b/c and 4)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffobj.devices import resolve_device
from diffobj.errors import UserError
from diffobj.objectives.schedules import Schedule
from diffobj.optimal.estimators import check_estimator, default_c, study_kinds
from diffobj.optimal.gaussian_posterior import gaussian_query_losses
from diffobj.optimal.inputs import images_to_unit
from diffobj.optimal.queries import mean_and_stderr, query_batch, query_groups
from diffobj.optimal.table import check_counts, level_times
from diffobj.seeds import xor_pair_seed

log = logging.getLogger(__name__)

STUDY_COLUMNS = (
    "log_snr",
    "t",
    "sigma_ve",
    "estimator",
    "subset",
    "C",
    "C_factor",
    "n_data",
    "n_queries",
    "estimate",
    "stderr",
    "exact",
    "exact_stderr",
    "bias",
    "bias_stderr",
    "relative_bias",
    "variance",
    "rmse",
)


def convergence_study(
    images: np.ndarray,
    schedule: Schedule,
    levels: int,
    queries: int,
    subsets: Sequence[int],
    c_factors: Sequence[float] = (1.0, 2.0, 4.0, 16.0),
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Bias and variance of SNIS / DOL / cDOL against the exact estimator (eps scale).

    At each level every estimator sees the same queries as the exact one, so its bias is
    measured pairwise: bias = mean(est_q - exact_q) with stderr std(est_q - exact_q)/sqrt(M).
    ``variance`` is the estimator's variance at M queries (stderr²), ``rmse`` = sqrt(bias² +
    variance). cDOL runs once per C = factor * N / L, and at the default C of ``default_c``
    (what ``--estimator cdol`` uses, about 2N/L) unless a factor already gives it.
    """
    check_counts(levels, queries)
    if schedule.process not in study_kinds():
        raise UserError(
            f"schedule {schedule.name}: the estimator study is for"
            f" {' / '.join(study_kinds())} schedules"
        )
    device = resolve_device(device, local_rank=None)
    data = images_to_unit(images).to(device)
    _check_study_grid(len(data), subsets, c_factors)
    # one batch size for all estimators: the queries are then the same, query by query
    batch_size = query_batch(queries, "snis", batch_size, device)
    times = level_times(schedule, levels)
    level = schedule.level(times)
    rows = []
    for i in range(levels):
        lam, alpha, sigma = (float(v[i]) for v in (level.log_snr, level.alpha, level.sigma))
        at = {"log_snr": lam, "t": float(times[i]), "sigma_ve": math.exp(-lam / 2)}
        common = dict(
            seed=xor_pair_seed(seed, i),
            batch_size=batch_size,
            progress=progress,
            desc=f"level {i + 1}/{levels} lam={lam:+.2f}",
        )
        rows += _study_level(data, at, alpha, sigma, queries, subsets, c_factors, common)
    return rows


def _check_study_grid(n_data: int, subsets: Sequence[int], c_factors: Sequence[float]) -> None:
    """UserError for a subset size cDOL cannot take, or a C factor <= 0."""
    for L in subsets:
        check_estimator("cdol", n_data, L, None, flag="--subsets")
    for factor in c_factors:
        if not factor > 0:
            raise UserError(f"--C-factors {factor}: must be positive")


def _study_level(
    data: torch.Tensor,
    at: dict[str, float],
    alpha: float,
    sigma: float,
    queries: int,
    subsets: Sequence[int],
    c_factors: Sequence[float],
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    """One level's rows in STUDY_COLUMNS order: each estimator at each subset size against the
    exact estimate of the same queries (``common``: the seed, batch size and progress bar)."""
    scale = math.exp(at["log_snr"])
    exact = gaussian_query_losses(data, alpha, sigma, queries, **common) * scale
    exact_mean, exact_err = mean_and_stderr(exact)
    shared = {**at, "n_data": len(data), "n_queries": queries}
    shared |= {"exact": exact_mean, "exact_stderr": exact_err}
    rows = []
    for L in subsets:
        for estimator, c_value, factor in _study_runs(len(data), L, c_factors):
            C = None if estimator == "snis" else c_value
            est = gaussian_query_losses(
                data, alpha, sigma, queries, estimator=estimator, subset=L, C=C, **common
            )
            groups = query_groups(queries, estimator, common["batch_size"], data.device)
            run = {"estimator": estimator, "subset": L, "C": c_value, "C_factor": factor}
            columns = {**shared, **run, **_against_exact(est * scale, exact, exact_mean, groups)}
            rows.append({name: columns[name] for name in STUDY_COLUMNS})
    log.info("%s: exact %.6g ± %.2g", common["desc"], exact_mean, exact_err)
    return rows


def _study_runs(n_data: int, L: int, c_factors: Sequence[float]) -> list[tuple[str, float, float]]:
    """(estimator, C, C as a factor of N / L) at subset size L: SNIS (no C), DOL (C = 1), cDOL
    at each factor, and cDOL at ``default_c`` unless a factor already gives it."""
    runs = [("snis", math.nan, math.nan), ("dol", 1.0, L / n_data)]
    runs += [("cdol", f * n_data / L, f) for f in c_factors]
    default = default_c(n_data, L)
    if not any(math.isclose(c, default, rel_tol=1e-9) for _, c, _ in runs[2:]):
        runs.append(("cdol", default, default * L / n_data))
    return runs


def _against_exact(
    est: torch.Tensor, exact: torch.Tensor, exact_mean: float, groups: torch.Tensor | None
) -> dict[str, float]:
    """An estimate's columns: its mean and stderr, and its bias paired query by query with the
    exact estimate (the standard errors by the subsets the queries share, ``groups``)."""
    mean, err = mean_and_stderr(est, groups)
    bias, bias_err = mean_and_stderr(est - exact, groups)
    return {
        "estimate": mean,
        "stderr": err,
        "bias": bias,
        "bias_stderr": bias_err,
        "relative_bias": bias / exact_mean if exact_mean > 0 else math.nan,
        "variance": err**2,
        "rmse": math.sqrt(bias**2 + err**2),
    }
