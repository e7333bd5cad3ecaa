"""Loss weightings w(lam): expressions in the log-SNR, shared by both processes.

The weighted loss at a noise level is w(lam) times the process's ELBO integrand; its full
factor on the per-time loss ("total weight") is w (-dlam/dt) for Gaussian diffusion and
w (-alpha'/(1 - alpha)) for masked diffusion. A weighting may also read the schedule's
t, alpha, dalpha_dt and dlam_dt (the masked "simple" weighting cancels the ELBO factor).

Monotone (non-increasing in lam along the schedule, i.e. non-decreasing in t) weightings are
weighted sums of improved ELBOs (Shi & Titsias); others are allowed, flagged and recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from diffobj import processes
from diffobj.errors import UserError
from diffobj.expr import OPTIMAL_LOSS, Compiled, ExprError, compile_expr
from diffobj.objectives.schedules import (
    DTYPE,
    PROCESSES,
    Level,
    Schedule,
    _load_yaml_mapping,
    library_file,
)

VARIABLES = ("lam", "t", "alpha", "dalpha_dt", "dlam_dt", OPTIMAL_LOSS)
WEIGHTING_KEYS = {"expr", "params", "description", "processes"}
DEFAULT_LIBRARY = library_file("weightings.yaml")


class WeightingError(UserError):
    """A malformed weighting; the message names the file, weighting and value."""


@dataclass(frozen=True)
class Weighting:
    name: str
    expr: str
    compiled: Compiled
    params: dict[str, float] = field(default_factory=dict)
    description: str = ""
    processes: tuple[str, ...] = PROCESSES
    # J*(lam) of the run's dataset and process (diffobj.optimal.curve.bind); None: not bound
    optimal_loss: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def uses_optimal_loss(self) -> bool:
        return self.compiled.depends_on(OPTIMAL_LOSS)

    def __call__(self, level: Level) -> torch.Tensor:
        values = {
            "lam": level.log_snr,
            "t": level.t,
            "alpha": level.alpha,
            "dalpha_dt": level.dalpha_dt,
            "dlam_dt": level.dlog_snr_dt,
            OPTIMAL_LOSS: self._optimal_loss(level.log_snr),
        }
        out = self.compiled(**values)
        return out.expand_as(level.log_snr) if out.shape != level.log_snr.shape else out

    def _optimal_loss(self, lam: torch.Tensor) -> torch.Tensor:
        # Unbound J* evaluates to NaN: a weighting that reads it is undefined without the
        # dataset's optimal loss (tables and figures of the library show it as missing).
        if self.optimal_loss is None:
            return torch.full_like(lam, float("nan"))
        return self.optimal_loss(lam)

    def total_weight(self, level: Level, process: str) -> torch.Tensor:
        """The full factor on the per-time loss: w times the process's ELBO weight."""
        return self(level) * processes.get(process).elbo_time_weight(level)

    def is_monotone(self, schedule: Schedule, points: int = 2001, rtol: float = 1e-7) -> bool:
        """Numerically: w non-decreasing in t (non-increasing in lam) on the schedule's range.
        False for a weighting that reads an unbound J*: monotonicity is then unknown."""
        if self.uses_optimal_loss and self.optimal_loss is None:
            return False
        t0, t1 = schedule.t_range
        eps = 1e-9 * (t1 - t0)
        t = torch.linspace(t0 + eps, t1 - eps, points, dtype=DTYPE)
        w = self(schedule.level(t))
        if not torch.isfinite(w).all():
            finite = torch.isfinite(w)
            w, t = w[finite], t[finite]
        steps = w[1:] - w[:-1]
        return bool((steps >= -rtol * w.abs().max()).all())


def check_values(
    weighting: Weighting, schedule: Schedule, process: str, where: str, points: int = 1025
) -> None:
    """A weighting must be finite, >= 0 and not identically zero on the schedule's log-SNR
    range (the range of its process): otherwise training would diverge, maximise a loss, or
    learn nothing. The error names the weighting and a lam where it fails.

    A weighting that reads an unbound J* is checked with the optimal loss of standard normal
    data, J*(lam) = sigmoid(lam) in eps units (a smooth stand-in in (0, 1)): the checks then
    catch a malformed expression, not the dataset's table, which the run binds later."""
    if weighting.uses_optimal_loss and weighting.optimal_loss is None:
        weighting = replace(weighting, optimal_loss=torch.sigmoid)
    t0, t1 = schedule.t_range
    level = schedule.level(torch.linspace(t0, t1, points, dtype=DTYPE))
    w, lam = weighting(level), level.log_snr
    lam_min, lam_max = schedule.log_snr_endpoints()
    on = f"(schedule {schedule.name}, {process} log-SNR range [{lam_min:g}, {lam_max:g}])"
    bad = ~torch.isfinite(w)
    if bad.any():
        raise WeightingError(
            f"{where}: w = {float(w[bad][0])} at lam = {float(lam[bad][0]):.6g} {on}; "
            "a weighting must be finite"
        )
    scale = float(w.abs().max())
    negative = w < -1e-9 * scale
    if negative.any():
        i = int(torch.argmin(w))
        raise WeightingError(
            f"{where}: w = {float(w[i]):.6g} < 0 at lam = {float(lam[i]):.6g} {on}; "
            "a weighting must be >= 0"
        )
    if scale == 0:
        raise WeightingError(f"{where}: w = 0 everywhere {on}; a weighting must not be all zero")


def build(name: str, entry: Any, source: str = "<spec>") -> Weighting:
    """A weighting from a library entry: an expression string or a mapping with ``expr``."""
    where = f"{source}: weightings.{name}"
    if isinstance(entry, str | int | float) and not isinstance(entry, bool):
        entry = {"expr": str(entry)}
    if not isinstance(entry, Mapping):
        raise WeightingError(f"{where}: expected an expression or a mapping, got {entry!r}")
    unknown = set(entry) - WEIGHTING_KEYS
    if unknown:
        raise WeightingError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {sorted(WEIGHTING_KEYS)})"
        )
    if "expr" not in entry:
        raise WeightingError(f"{where}: missing key 'expr'")
    params = dict(entry.get("params") or {})
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in params.values()):
        raise WeightingError(f"{where}.params: expected numbers by name, got {params!r}")
    clash = set(params) & set(VARIABLES)
    if clash:
        raise WeightingError(f"{where}.params: {sorted(clash)[0]!r} is a variable, not a parameter")
    processes = tuple(entry.get("processes") or PROCESSES)
    bad = [p for p in processes if p not in PROCESSES]
    if bad:
        raise WeightingError(
            f"{where}.processes: unknown process {bad[0]!r} (known: {list(PROCESSES)})"
        )
    try:
        compiled = compile_expr(entry["expr"], VARIABLES, params)
    except ExprError as err:
        raise WeightingError(f"{where}.expr: {err}") from None
    return Weighting(
        name, str(entry["expr"]), compiled, params, entry.get("description", ""), processes
    )


def with_params(base: Weighting, params: Mapping[str, float], name: str) -> Weighting:
    """A library weighting with some parameters overridden, e.g. sigmoid with b = 2."""
    unknown = set(params) - set(base.params)
    if unknown:
        raise WeightingError(
            f"weightings.{name}: {base.name} has no parameter {sorted(unknown)[0]!r}"
        )
    merged = {**base.params, **params}
    return build(
        name,
        {
            "expr": base.expr,
            "params": merged,
            "description": base.description,
            "processes": list(base.processes),
        },
    )


def load_library(path: str | Path = DEFAULT_LIBRARY) -> dict[str, Weighting]:
    """Every weighting of a library file, built (so a bad one fails at load, naming itself)."""
    try:
        entries = _load_yaml_mapping(path, "weightings")
    except ValueError as err:
        raise WeightingError(str(err)) from None
    return {name: build(name, entry, str(path)) for name, entry in entries.items()}


def evaluate_on_schedule(
    weighting: Weighting, schedule: Schedule, process: str, points: int = 257
) -> dict[str, torch.Tensor]:
    """w, total weight and log-SNR on a grid of times over the schedule's range (for tables)."""
    t0, t1 = schedule.t_range
    eps = 1e-6 * (t1 - t0)
    t = torch.linspace(t0 + eps, t1 - eps, points, dtype=DTYPE)
    level = schedule.level(t)
    return {
        "t": t,
        "log_snr": level.log_snr,
        "weight": weighting(level),
        "total_weight": weighting.total_weight(level, process),
    }
