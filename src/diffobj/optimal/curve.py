"""The optimal loss J*(lam) of a run's dataset and process, as a function of the log-SNR.

Weightings and training densities may use it under the name ``Jstar`` (diffobj.expr.OPTIMAL_LOSS):
the value of the run's optimal-loss table (``diffobj optimal-loss``) interpolated in lam
(``diffobj.objectives.scales.interpolate_optimal``), in the loss's own units (Gaussian: eps-MSE per dimension; masked: nats per dimension), held
at the end values outside the table. The optimal loss is >= 0 by definition; an estimate below
zero (estimator noise where J* ~ 0) is clipped to 0, so ``min(1/Jstar, w)`` is w there.
The critical noise level (``critical_log_snr``) is where the curve leaves ~0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffobj.errors import UserError
from diffobj.expr import OPTIMAL_LOSS
from diffobj.io import read_csv
from diffobj.objectives import scales
from diffobj.objectives.weightings import build as build_weighting

__all__ = [
    "OPTIMAL_LOSS",
    "DENSITIES",
    "OptimalLossCurve",
    "read_table",
    "density_name",
    "needs_optimal_loss",
    "bind",
    "critical_log_snr",
]

# the training densities (diffobj.objectives.densities); here so that ``needs_optimal_loss`` can name a
# run's density without importing diffobj.objectives.densities, which imports this module
DENSITIES = ("schedule", "adaptive_corrected", "optimal_loss_schedule")


def read_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(log_snr, optimal_loss) of an optimal-loss table, sorted by log-SNR."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: optimal-loss table not found")
    rows = read_csv(path)
    if not rows or not {"log_snr", "optimal_loss"} <= set(rows[0]):
        raise UserError(f"{path}: an optimal-loss table needs columns log_snr and optimal_loss")
    try:
        lam = np.array([float(r["log_snr"]) for r in rows])
        opt = np.array([float(r["optimal_loss"]) for r in rows])
    except ValueError as err:
        raise UserError(f"{path}: non-numeric log_snr / optimal_loss ({err})") from None
    if not (np.isfinite(lam).all() and np.isfinite(opt).all()):
        raise UserError(f"{path}: log_snr and optimal_loss must be finite")
    order = np.argsort(lam)
    return lam[order], opt[order]


@dataclasses.dataclass(frozen=True)
class OptimalLossCurve:
    """J*(lam) from a table's points (diffobj.objectives.scales.interpolate_optimal: Gaussian linear in
    the x0 scale, masked linear), constant beyond its ends; clipped at 0."""

    log_snr: np.ndarray  # increasing
    value: np.ndarray
    kind: str  # the process: how the table is interpolated

    @classmethod
    def from_table(cls, path: str | Path, kind: str) -> OptimalLossCurve:
        lam, opt = read_table(path)
        return cls(lam, np.clip(opt, 0.0, None), kind)

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        query = lam.detach().to("cpu", torch.float64).numpy()
        values = scales.interpolate_optimal(query, self.log_snr, self.value, self.kind)
        return torch.as_tensor(values, dtype=lam.dtype, device=lam.device)


def density_name(training: Mapping[str, Any]) -> str:
    """The run's training density; the old boolean ``adaptive: true`` is ``adaptive_corrected``."""
    name = training.get("density") or (
        "adaptive_corrected" if training.get("adaptive") else "schedule"
    )
    if name not in DENSITIES:
        raise UserError(f"training.density: unknown {name!r} (known: {list(DENSITIES)})")
    if training.get("adaptive") and name != "adaptive_corrected":
        raise UserError(
            f"training.adaptive: true means density adaptive_corrected, not {name!r}; drop one"
        )
    return name


def needs_optimal_loss(weighting_entry: Mapping[str, Any], training: Mapping[str, Any]) -> bool:
    """Whether a run needs its optimal-loss table: its weighting reads Jstar, or its training
    density is built from the gap to the optimal loss. Used by the DAG and by the trainer."""
    entry = dict(weighting_entry)
    weighting = build_weighting(str(entry.pop("name", "weighting")), entry)
    return weighting.uses_optimal_loss or density_name(training) != "schedule"


def bind(weighting: Any, path: str | Path | None, run_id: str, kind: str) -> Any:
    """The weighting with J* (of process ``kind``) bound from ``path`` if it reads Jstar."""
    if not weighting.uses_optimal_loss:
        return weighting
    if path is None:
        raise UserError(
            f"run {run_id}: weighting {weighting.name!r} uses {OPTIMAL_LOSS}, which needs "
            "--optimal-loss TABLE.csv (from `diffobj optimal-loss`)"
        )
    return dataclasses.replace(weighting, optimal_loss=OptimalLossCurve.from_table(path, kind))


def critical_log_snr(
    log_snr: Sequence[float], loss: Sequence[float], rel_tol: float = 1e-3
) -> float | None:
    """The log-SNR where the optimal loss leaves ~0, going from low to high noise.

    ``loss`` must be increasing with noise (x0-scale Gaussian loss, masked cross-entropy). The
    critical level is where the loss first reaches ``rel_tol`` times its largest value,
    interpolated linearly between the two levels around it; None if it never does, or if the
    least noisy level is already above.
    """
    lam = np.asarray(log_snr, dtype=float)
    values = np.asarray(loss, dtype=float)
    keep = np.isfinite(lam) & np.isfinite(values)
    lam, values = lam[keep], values[keep]
    if len(lam) < 2:
        return None
    order = np.argsort(-lam)  # least noise first
    lam, values = lam[order], values[order]
    threshold = rel_tol * values.max()
    above = np.nonzero(values >= threshold)[0]
    if len(above) == 0 or above[0] == 0:
        return None
    j = above[0]
    frac = (threshold - values[j - 1]) / (values[j] - values[j - 1])
    return float(lam[j - 1] + frac * (lam[j] - lam[j - 1]))
