"""Adaptive training noise density (Xu et al. 2025; Kingma & Gao's adaptive p(lam)).

The reweighted objective of a run, written in log-SNR (SCIENCE §2),

    L_w = c ∫ W(lam) E[error | lam] dlam,   W = w(lam) (Gaussian, c = 1/2),
                                            W = w(lam) sigmoid(lam) (masked, c = 1),

does not depend on which density p(lam) the training noise levels are drawn from, as long as
each sample is importance weighted by c W(lam) / p(lam). Here p is

    p(lam) ∝ W(lam) · max(gap(lam), floor),   gap = running model error - optimal loss,

with the gap piecewise constant over the fixed log-SNR bins: training effort goes where the
model is furthest from the best achievable loss. w is evaluated on the run's own schedule at
the same log-SNR (weightings such as masked "simple" read the schedule's t and alpha'), so the
objective stays exactly the chosen weighting on the chosen schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffobj import schedules
from diffobj.errors import UserError
from diffobj.io import read_csv
from diffobj.processes import gaussian, masked
from diffobj.processes.gaussian import LossTerms
from diffobj.schedules import Level, Schedule
from diffobj.weightings import Weighting

FLOOR_FRACTION = 0.05  # floor = this fraction of the mean positive gap: bounds w/p, keeps coverage
ERROR_EMA = 0.5  # running binned error: weight of the newest refresh window


def read_optimal_loss(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
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


def bin_edges(log_snr_range: tuple[float, float], bins: int) -> torch.Tensor:
    """The fixed log-SNR bins of a process: equal bins over its range (float64)."""
    lo, hi = log_snr_range
    return torch.linspace(float(lo), float(hi), bins + 1, dtype=torch.float64)


def bin_centres(edges: torch.Tensor) -> torch.Tensor:
    return (edges[1:] + edges[:-1]) / 2


def bin_index(log_snr: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each log-SNR; values on or beyond the ends go to the first / last bin."""
    inner = edges[1:-1].to(log_snr.device)
    return torch.bucketize(log_snr.to(torch.float64), inner, right=True)


def level_at(schedule: Schedule, log_snr: torch.Tensor) -> Level:
    """The run schedule's noise level at the given log-SNR (t found by bisection)."""
    return schedule.level(schedule.t_of_log_snr(log_snr))


def lam_weight(weighting: Weighting, level: Level, kind: str) -> torch.Tensor:
    """W(lam): the objective's weight on E[error | lam] per unit log-SNR (up to c)."""
    w = weighting(level)
    return w if kind == "gaussian" else w * torch.sigmoid(level.log_snr)


class AdaptiveDensity:
    """The running gap per bin and the sampling schedule built from it."""

    def __init__(
        self,
        kind: str,
        schedule: Schedule,
        weighting: Weighting,
        edges: torch.Tensor,
        optimal: tuple[np.ndarray, np.ndarray],
    ):
        self.kind = kind
        self.schedule = schedule
        self.weighting = weighting
        self.edges = edges
        lam, opt = optimal
        self.optimal = torch.as_tensor(np.interp(bin_centres(edges).numpy(), lam, opt))
        self.running_error = torch.full((len(edges) - 1,), float("nan"), dtype=torch.float64)
        self.density_schedule: Schedule | None = None  # None: not refreshed yet, use the run's

    # -- state (checkpointed) ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"running_error": self.running_error.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.running_error = state["running_error"].to(torch.float64)
        self.refresh_schedule()

    # -- refresh ------------------------------------------------------------------------------
    def update(self, error_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Fold one window of binned training errors into the running error; rebuild p."""
        error_sum, count = error_sum.double().cpu(), count.double().cpu()
        seen = count > 0
        window = torch.where(seen, error_sum / count.clamp_min(1), torch.nan)
        fresh = seen & self.running_error.isnan()
        blended = (1 - ERROR_EMA) * self.running_error + ERROR_EMA * window
        self.running_error = torch.where(
            fresh, window, torch.where(seen, blended, self.running_error)
        )
        self.refresh_schedule()

    def gap(self) -> torch.Tensor:
        """max(running error - optimal loss, floor) per bin; unseen bins get the mean gap."""
        gap = self.running_error - self.optimal
        known = ~gap.isnan()
        positive = gap[known].clamp_min(0)
        mean = positive.mean() if positive.numel() else torch.tensor(1.0, dtype=torch.float64)
        mean = mean if mean > 0 else torch.tensor(1.0, dtype=torch.float64)
        gap = torch.where(known, gap, mean)
        return gap.clamp_min(FLOOR_FRACTION * mean)

    def density(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """p(lam) up to a constant: W(lam) times the gap of lam's bin (piecewise constant)."""
        gap = self.gap()

        def p(lam: torch.Tensor) -> torch.Tensor:
            level = level_at(self.schedule, lam)
            return (
                lam_weight(self.weighting, level, self.kind)
                * gap.to(lam.device)[bin_index(lam, self.edges)]
            )

        return p

    def refresh_schedule(self) -> None:
        if self.running_error.isnan().all():
            self.density_schedule = None
            return
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        self.density_schedule = schedules.from_density(
            f"adaptive_{self.schedule.name}", self.kind, self.density(), (lo, hi), grid_size=2049
        )

    # -- the loss -----------------------------------------------------------------------------
    def loss(
        self, model_fn: Callable, x: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        """The run's weighted loss with lam ~ p and importance weight c W(lam) / p(lam)."""
        if self.density_schedule is None:
            process = gaussian if self.kind == "gaussian" else masked
            return process.weighted_loss(model_fn, x, self.schedule, self.weighting, generator)
        u = gaussian.stratified_uniform(x.shape[0], generator, x.device)
        # t of the density schedule is uniform on [0, 1]; its -dlam/dt is 1 / p_normalised(lam)
        # (its tables live on the CPU: bring the draws back to the batch's device)
        lam = self.density_schedule.log_snr(u).to(x.device)
        inv_p = -self.density_schedule.dlog_snr_dt(u).to(x.device)
        level = level_at(self.schedule, lam)
        c = 0.5 if self.kind == "gaussian" else 1.0
        factor = c * lam_weight(self.weighting, level, self.kind) * inv_p
        error = evaluate_error(self.kind, model_fn, x, level, generator)
        return LossTerms(factor.to(error.dtype) * error, level.log_snr, error.detach())


def evaluate_error(
    kind: str, model_fn: Callable, x: torch.Tensor, level: Level, generator: torch.Generator | None
) -> torch.Tensor:
    """Per-sample unweighted per-dimension error at given levels, as LossTerms.error:
    Gaussian eps-MSE, masked cross-entropy (nats) over masked tokens, both divided by D."""
    if kind == "masked":
        z = masked.corrupt(x, level, generator)
        return masked.masked_cross_entropy(model_fn(z, level), x, z)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    eps_hat = model_fn(gaussian.corrupt(x, level, eps), level)
    return (eps - eps_hat.to(eps.dtype)).square().flatten(1).mean(1)
