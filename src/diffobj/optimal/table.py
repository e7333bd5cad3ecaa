"""The optimal-loss table: one row per noise level of a schedule's even time grid, the
estimate of the run's process (``Process.optimal_loss``) and how long it took."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from diffobj import processes
from diffobj.devices import resolve_device
from diffobj.errors import UserError
from diffobj.objectives.schedules import DTYPE, Schedule
from diffobj.optimal.estimators import ESTIMATORS, check_estimator, estimator_names
from diffobj.seeds import xor_pair_seed

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "log_snr",
    "t",
    "optimal_loss",
    "stderr",
    "estimator",
    "n_data",
    "n_queries",
    "process",
    "alpha",
    "sigma",
    "sigma_ve",
    "optimal_loss_x0",
    "stderr_x0",
    "subset",
    "C",
    "seconds",
    "queries_per_s",
    "tflops",
)


def level_times(schedule: Schedule, levels: int) -> torch.Tensor:
    """K times on an even grid over the schedule's time range (first: least noise)."""
    t0, t1 = schedule.t_range
    return torch.linspace(t0, t1, levels, dtype=DTYPE)


def check_counts(levels: int, queries: int) -> None:
    if levels <= 0:
        raise UserError(f"--levels {levels}: must be a positive number of noise levels")
    if queries <= 0:
        raise UserError(f"--queries {queries}: must be a positive number of queries per level")


def optimal_loss_table(
    images: np.ndarray,
    process: str,
    schedule: Schedule,
    levels: int,
    queries: int,
    *,
    estimator: str = "exact",
    subset: int | None = None,
    C: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per noise level (the DESIGN.md contract, columns TABLE_COLUMNS).

    Gaussian: ``optimal_loss`` is eps-scale per dimension, ``optimal_loss_x0`` the x0 scale,
    ``sigma_ve`` = exp(-lam / 2). Masked: nats per dimension (x0 columns are nan).
    """
    _check_table(process, schedule, levels, queries, estimator)
    device = resolve_device(device, local_rank=None)
    noise = processes.get(process)
    data = noise.optimal_data(images).to(device)
    check_estimator(estimator, len(images), subset, C)
    shared = _shared_columns(process, estimator, len(images), queries, subset, C)
    flops = 4.0 * queries * shared["subset"] * data.shape[1]
    options = dict(
        estimator=estimator, subset=subset, C=C, batch_size=batch_size, progress=progress
    )
    times = level_times(schedule, levels)
    level = schedule.level(times)
    rows = []
    for i in range(levels):
        lam, alpha, sigma = (float(v[i]) for v in (level.log_snr, level.alpha, level.sigma))
        desc = f"level {i + 1}/{levels} lam={lam:+.2f}"
        begin = time.perf_counter()
        losses = noise.optimal_loss(
            data, lam, alpha, sigma, queries, seed=xor_pair_seed(seed, i), desc=desc, **options
        )
        _synchronize(device)
        seconds = time.perf_counter() - begin
        at = {"log_snr": lam, "t": float(times[i]), "alpha": alpha, "sigma": sigma}
        rows.append(_level_row(shared, at, losses, seconds, flops))
        _log_level(desc, rows[-1], device)
    return rows


def _check_table(process: str, schedule: Schedule, levels: int, queries: int, estimator: str):
    """UserError for counts below 1, a schedule of another process, or an estimator that is
    unknown or not for the process."""
    check_counts(levels, queries)
    if process != schedule.process:
        raise UserError(f"schedule {schedule.name} is a {schedule.process} schedule, not {process}")
    ESTIMATORS.check(estimator, "--estimator")
    if process not in ESTIMATORS[estimator].processes:
        raise UserError(
            f"--estimator {estimator}: the {process} process has only the "
            f"{' / '.join(estimator_names(process))} estimator"
        )


def _shared_columns(
    process: str, estimator: str, n_data: int, queries: int, subset: int | None, C: float | None
) -> dict[str, Any]:
    """The columns alike on every level; ``subset`` is the candidates per query (N if all)."""
    entry = ESTIMATORS[estimator]
    return {
        "estimator": estimator,
        "n_data": n_data,
        "n_queries": queries,
        "process": process,
        "subset": subset if entry.uses_subset else n_data,
        "C": entry.c_value(n_data, subset, C),
    }


def _level_row(
    shared: dict[str, Any],
    at: dict[str, float],
    losses: dict[str, float],
    seconds: float,
    flops: float,
) -> dict[str, Any]:
    """One level's row in TABLE_COLUMNS order: the shared columns, where the level is (``at``),
    its losses (``Process.optimal_loss``) and its speed."""
    speed = {
        "seconds": seconds,
        "queries_per_s": shared["n_queries"] / seconds,
        "tflops": flops / seconds / 1e12,
    }
    columns = {**shared, **at, **losses, **speed}
    return {name: columns[name] for name in TABLE_COLUMNS}


def _log_level(desc: str, row: dict[str, Any], device: torch.device) -> None:
    log.info(
        "%s: optimal loss %.6g ± %.2g, %.0f queries/s, %.3f TFLOP/s (%.2f s)%s",
        desc,
        row["optimal_loss"],
        row["stderr"],
        row["queries_per_s"],
        row["tflops"],
        row["seconds"],
        _peak_memory(device),
    )


def _peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
