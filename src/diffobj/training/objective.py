"""The training objective of a run, built once from its config.

``build_objective`` binds the run's weighting, picks where the log-SNRs are drawn from
(``densities.density_name``) and returns an ``Objective``: ``objective(model_fn, x, draws)``
gives the batch's ``LossTerms``. With the ``schedule`` density that is the process's weighted
loss (Gaussian or masked, chosen here, not per step); with a gap density it is the density's
loss, and ``objective.density`` is the state to checkpoint and refresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffobj import processes
from diffobj.errors import UserError
from diffobj.objectives import densities
from diffobj.objectives.schedules import Schedule
from diffobj.objectives.weightings import Weighting
from diffobj.optimal import curve as optimal_curve
from diffobj.processes.gaussian import LossTerms
from diffobj.run_config import RunConfig
from diffobj.runs import ModelFn
from diffobj.seeds import Draws

Loss = Callable[[ModelFn, torch.Tensor, Draws], LossTerms]


@dataclass(frozen=True)
class Objective:
    """The per-sample loss of a batch; ``density``: the gap density it draws from, if any."""

    loss: Loss
    schedule: Schedule  # the run's schedule (built once: every part of the run uses this one)
    weighting: Weighting
    edges: torch.Tensor  # the fixed log-SNR bins of the logs and the density
    density: densities.GapDensity | None = None

    def __call__(self, model_fn: ModelFn, x: torch.Tensor, draws: Draws) -> LossTerms:
        return self.loss(model_fn, x, draws)


def bind_weighting(config: RunConfig, optimal_loss: str | Path | None) -> Weighting:
    weighting = optimal_curve.bind(config.weighting, optimal_loss, config.run_id, config.kind)
    if config.kind not in weighting.processes:
        raise UserError(
            f"run {config.run_id}: weighting {weighting.name!r} is for "
            f"{list(weighting.processes)}, not {config.kind}"
        )
    return weighting


def gap_density(
    config: RunConfig,
    schedule: Schedule,
    weighting: Weighting,
    edges: torch.Tensor,
    optimal_loss: str | Path | None,
) -> densities.GapDensity | None:
    """The run's gap density (None for ``training.density: schedule``)."""
    name = densities.density_name(config.training)
    if name == "schedule":
        return None
    if optimal_loss is None:
        raise UserError(
            f"run {config.run_id}: training.density {name} needs "
            "--optimal-loss TABLE.csv (from `diffobj optimal-loss`)"
        )
    table = densities.read_optimal_loss(optimal_loss)
    return densities.build(name, config.kind, schedule, weighting, edges, table)


def build_objective(config: RunConfig, optimal_loss: str | Path | None = None) -> Objective:
    """The run's objective (``optimal_loss``: the table a gap density or weighting needs)."""
    schedule = config.schedule
    weighting = bind_weighting(config, optimal_loss)
    edges = densities.bin_edges(
        tuple(config.process["log_snr_range"]), int(config.training.get("log_snr_bins", 16))
    )
    density = gap_density(config, schedule, weighting, edges, optimal_loss)
    if density is not None:
        return Objective(density.loss, schedule, weighting, edges, density)
    weighted_loss = processes.get(config.kind).weighted_loss

    def loss(model_fn: ModelFn, x: torch.Tensor, draws: Draws) -> LossTerms:
        return weighted_loss(model_fn, x, schedule, weighting, draws)

    return Objective(loss, schedule, weighting, edges, None)
