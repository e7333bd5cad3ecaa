"""Training noise densities by name: where the training log-SNRs are drawn from.

The reweighted objective of a run, written in log-SNR (docs/science.md §2),

    L_w = c ∫ W(lam) E[error | lam] dlam,   W = w(lam) (Gaussian, c = 1/2),
                                            W = w(lam) sigmoid(lam) (masked, c = 1).

``training.density`` names how lam is drawn (``density_name``):

- ``schedule`` (default): lam = lam(t), t uniform on the run's schedule, each sample weighted by
  c W / p_schedule, so the objective is L_w.
- ``adaptive_corrected`` (formerly ``training.adaptive: true``): lam ~ p ∝ W · max(gap, floor)
  and each sample importance weighted by c W / p: the expected objective and its optimum are
  L_w's; only the variance changes (Kingma & Gao's adaptive sampler with the gap to the optimal
  loss in place of the loss).
- ``optimal_loss_schedule``: Xu et al.'s schedule (2506.13763), p ∝ W · max(gap, 0) and each
  sample weighted by c W, with no correction, so the effective weighting is W · p (normalised p).
  Before the first refresh lam is drawn from the run's schedule, also uncorrected.

gap = running binned mean of the per-sample excess error − J*(lam_i), piecewise constant over the
fixed log-SNR bins, refreshed during training. J* is subtracted from each sample at its own
log-SNR (the optimal-loss table interpolated there, ``diffobj.optimal.curve``) before the samples
are binned: a bin is ~1.4 wide in lam and J* changes by orders of magnitude across it, so the
bin's mean error minus J* at its centre is not the bin's gap (an exactly optimal model showed
gaps of -8% to 1e15 times J* that way, and Xu et al.'s p collapsed onto one bin). A bin's draws
are pooled over refresh windows until it has ``MIN_DRAWS`` of them: the mean of a few draws is
noisy, and where W is large (the low-SNR end of an x0-scale weighting) a small chance gap there
drew most of a run's draws for hundreds of steps. w is evaluated on the run's own schedule at the
same log-SNR (weightings such as masked "simple" read the schedule's t and alpha').

The density is per unit lam, i.e. per unit log sigma (lam = -2 log sigma, a constant Jacobian).
With ``xu_optimal`` (its weight e^-lam w_sigma on the eps error) W · gap_eps = w_sigma · gap_x0, so
the draws follow p(log sigma) ∝ w_sigma (J_sigma - J*_sigma) in the paper's x0 scale
(docs/densities.md says why log sigma and not sigma).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from diffobj import processes
from diffobj.objectives import schedules
from diffobj.objectives.schedules import Level, Schedule
from diffobj.objectives.weightings import Weighting
from diffobj.optimal.curve import (  # noqa: F401 - DENSITIES, density_name: defined there
    DENSITIES,
    OptimalLossCurve,
    density_name,
    read_table,
)
from diffobj.processes import gaussian
from diffobj.processes.gaussian import LossTerms
from diffobj.seeds import Draws

FLOOR_FRACTION = 0.05  # corrected: floor = this share of the mean positive gap (bounds W/p)
ERROR_EMA = 0.5  # running binned gap: weight of the newest refresh window
MIN_DRAWS = 64  # a bin's draws are pooled over windows until this many: its mean is then ±1/8 sd
GRID = 8193  # p tabulated on this many lam points: a jump at a bin edge blurs over one cell

read_optimal_loss = read_table  # the optimal-loss table reader (diffobj.optimal.curve)


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
    """c W(lam): the objective's weight on E[error | lam] per unit log-SNR (w times the ELBO's)."""
    return weighting(level) * processes.get(kind).elbo_weight(level.log_snr)


class GapDensity:
    """The running gap per bin and the sampling schedule built from it (see the module doc)."""

    corrected = True  # importance weight c W / p (True) or c W (False)
    floor_fraction = FLOOR_FRACTION

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
        self.optimal = OptimalLossCurve(lam, np.clip(opt, 0.0, None), kind)  # J* at any lam
        self.running_gap = torch.full((len(edges) - 1,), float("nan"), dtype=torch.float64)
        self.pending_sum = torch.zeros(len(edges) - 1, dtype=torch.float64)  # not yet folded in
        self.pending_count = torch.zeros(len(edges) - 1, dtype=torch.float64)
        self.density_schedule: Schedule | None = None  # None: not refreshed yet, use the run's

    # -- state (checkpointed) ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "running_gap": self.running_gap.clone(),
            "pending_sum": self.pending_sum.clone(),
            "pending_count": self.pending_count.clone(),
        }

    def load_state_dict(self, state: dict) -> bool:
        """Restore the gap; False (state dropped, the gap measured afresh) for a checkpoint from
        before the per-sample gap, whose binned raw errors cannot be turned into gaps."""
        if "running_gap" not in state:
            print(
                "checkpoint from before the per-sample gap: its binned training errors are "
                "dropped and the gap to the optimal loss is measured afresh",
                file=sys.stderr,
            )
            return False
        self.running_gap = state["running_gap"].to(torch.float64)
        self.pending_sum = state["pending_sum"].to(torch.float64)
        self.pending_count = state["pending_count"].to(torch.float64)
        self.refresh_schedule()
        return True

    # -- refresh ------------------------------------------------------------------------------
    def update(self, excess_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Pool one window of binned excess errors (error - J*(lam) per sample, ``excess``); fold
        the bins with ``MIN_DRAWS`` pooled draws into the running gap; rebuild p."""
        self.pending_sum += excess_sum.double().cpu()
        self.pending_count += count.double().cpu()
        seen = self.pending_count >= MIN_DRAWS
        window = torch.where(seen, self.pending_sum / self.pending_count.clamp_min(1), torch.nan)
        self.pending_sum = torch.where(seen, 0.0, self.pending_sum)
        self.pending_count = torch.where(seen, 0.0, self.pending_count)
        fresh = seen & self.running_gap.isnan()
        blended = (1 - ERROR_EMA) * self.running_gap + ERROR_EMA * window
        self.running_gap = torch.where(fresh, window, torch.where(seen, blended, self.running_gap))
        self.refresh_schedule()

    def gap(self) -> torch.Tensor:
        """max(running gap, floor) per bin; unseen bins get the mean gap."""
        gap = self.running_gap
        known = ~gap.isnan()
        positive = gap[known].clamp_min(0)
        mean = positive.mean() if positive.numel() else torch.tensor(1.0, dtype=torch.float64)
        mean = mean if mean > 0 else torch.tensor(1.0, dtype=torch.float64)
        gap = torch.where(known, gap, mean)
        return gap.clamp_min(self.floor_fraction * mean)

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
        # no gap seen yet, or none of the seen ones positive (an optimal model where it was
        # measured: unseen bins' stand-in gap would draw the run there): the run's schedule
        if not (self.running_gap > 0).any():
            self.density_schedule = None
            return
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        self.density_schedule = schedules.from_density(
            f"gap_{self.schedule.name}", self.kind, self.density(), (lo, hi), grid_size=GRID
        )

    # -- the loss -----------------------------------------------------------------------------
    def draw(
        self, batch: int, generator: Draws, device: torch.device | str
    ) -> tuple[Level, torch.Tensor, torch.Tensor]:
        """Levels of a batch, each sample's factor on its error (c W / p or c W) and J* at each
        sample's log-SNR (float64)."""
        sampler = self.density_schedule or self.schedule
        u = gaussian.stratified_uniform(batch, generator, device)
        # the sampling schedule's t is mapped from u; its -dlam/dt times the Jacobian is 1 / p(lam)
        # (its tables live on the CPU: the level goes to the batch's device once made). J*(lam)
        # is looked up here, on the CPU, so the step needs no second device-to-host copy.
        t, jacobian = sampler.time_from_uniform(u.cpu())
        level = level_at(self.schedule, sampler.log_snr(t))
        optimal = self.optimal(level.log_snr).to(device)  # at the level the error is taken at
        level = level.to(device)
        factor = lam_weight(self.weighting, level, self.kind)
        if self.corrected:
            factor = factor * (-sampler.dlog_snr_dt(t).to(device)) * jacobian
        return level, factor, optimal

    def loss(self, model_fn: Callable, x: torch.Tensor, generator: Draws) -> LossTerms:
        """The run's loss with lam drawn from this density; ``excess`` = error - J*(lam), per
        sample, is what the refresh windows bin (the module doc says why not J* per bin)."""
        level, factor, optimal = self.draw(x.shape[0], generator, x.device)
        error = evaluate_error(self.kind, model_fn, x, level, generator)
        return LossTerms(
            factor.to(error.dtype) * error,
            level.log_snr,
            error.detach(),
            excess(error.detach(), optimal),
        )


def excess(error: torch.Tensor, optimal: torch.Tensor) -> torch.Tensor:
    """error - J*(lam) per sample, in float64 like the bin sums it goes into."""
    return error.double() - optimal


class AdaptiveCorrected(GapDensity):
    """p ∝ W max(gap, floor), importance corrected: L_w unchanged, lower variance."""


class OptimalLossSchedule(GapDensity):
    """Xu et al.: p ∝ W max(gap, 0), no correction: the effective weighting is W p."""

    corrected = False
    floor_fraction = 0.0


DENSITY_CLASSES = {
    "adaptive_corrected": AdaptiveCorrected,
    "optimal_loss_schedule": OptimalLossSchedule,
}


def build(
    name: str,
    kind: str,
    schedule: Schedule,
    weighting: Weighting,
    edges: torch.Tensor,
    optimal: tuple[np.ndarray, np.ndarray],
) -> GapDensity:
    """The named gap density (``schedule`` needs none: the trainer uses the process's loss)."""
    return DENSITY_CLASSES[name](kind, schedule, weighting, edges, optimal)


def evaluate_error(
    kind: str, model_fn: Callable, x: torch.Tensor, level: Level, generator: Draws
) -> torch.Tensor:
    """Per-sample unweighted per-dimension error at given levels, as LossTerms.error:
    Gaussian eps-MSE, masked cross-entropy (nats) over masked tokens, both divided by D."""
    return processes.get(kind).error(model_fn, x, level, generator)
