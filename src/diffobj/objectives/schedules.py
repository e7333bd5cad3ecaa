"""Noise schedules of both processes, written once through the log-SNR lam(t).

A schedule maps time t in [0, 1] to lam(t), decreasing. Everything else derives from it:

- Gaussian: z = alpha x + sigma eps, lam = log(alpha^2 / sigma^2). Declared by alpha(t) and
  sigma(t), by alpha(t) alone (variance preserving), or by lam(t) (variance preserving,
  alpha^2 = sigmoid(lam)).
- Masked: a token is kept with probability alpha(t), lam = log(alpha / (1 - alpha)), so
  alpha = sigmoid(lam). Declared by alpha(t) or by lam(t).
- A training noise density p(lam) that is not a schedule over t (EDM's log-normal sigma) is
  declared as ``density``; it becomes a schedule through its inverse CDF, t = P(Lam > lam),
  so that uniform t draws lam from p and -dlam/dt = 1 / p(lam).

Every schedule is used on a log-SNR range [lam_min, lam_max] (a property of the process in the
spec), i.e. on the times [t(lam_max), t(lam_min)]: two schedules with the same range have the
same ELBO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffobj import REPO_ROOT, processes
from diffobj.errors import UserError
from diffobj.expr import Compiled, ExprError, compile_expr
from diffobj.io import read_yaml

PROCESSES = processes.KINDS
# The range a library entry is checked on when the spec has no process of its kind.
DEFAULT_LOG_SNR_RANGE = {"gaussian": (-10.0, 10.0), "masked": (-9.21, 9.21)}
DTYPE = torch.float64  # schedule math is cheap; float64 keeps the ends of the range exact

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class ScheduleError(UserError):
    """A malformed schedule declaration; the message names the file, schedule and key."""


@dataclass(frozen=True)
class Level:
    """Everything about a noise level that losses and weightings may use (tensors of one shape)."""

    t: torch.Tensor
    log_snr: torch.Tensor
    dlog_snr_dt: torch.Tensor
    alpha: torch.Tensor  # Gaussian: signal scale; masked: probability a token is kept
    sigma: torch.Tensor  # Gaussian: noise scale; masked: 1 - alpha
    dalpha_dt: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Level:
        return Level(*(v.to(device=device, dtype=dtype or v.dtype) for v in self.__dict__.values()))

    def expand(self, ndim: int) -> Level:
        """Each field reshaped to broadcast against a batch of ``ndim``-dimensional tensors."""
        return Level(
            *(v.reshape(v.shape + (1,) * (ndim - v.dim())) for v in self.__dict__.values())
        )


@dataclass
class Schedule:
    """lam(t) and its derivative, plus the process-specific alpha (and sigma) when declared."""

    name: str
    process: str
    log_snr_fn: TensorFn
    dlog_snr_dt_fn: TensorFn
    alpha_fn: TensorFn | None = None
    sigma_fn: TensorFn | None = None
    dalpha_dt_fn: TensorFn | None = None
    description: str = ""
    log_snr_range: tuple[float, float] | None = None  # (lam_min, lam_max) it is used on
    _t_range: tuple[float, float] | None = field(default=None, repr=False)

    # -- the path --------------------------------------------------------------------------
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_snr_fn(_f64(t))

    def dlog_snr_dt(self, t: torch.Tensor) -> torch.Tensor:
        return self.dlog_snr_dt_fn(_f64(t))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        t = _f64(t)
        if self.alpha_fn is not None:
            return self.alpha_fn(t)
        return processes.get(self.process).alpha_of_log_snr(self.log_snr(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = _f64(t)
        if self.sigma_fn is not None:
            return self.sigma_fn(t)
        process = processes.get(self.process)
        if self.alpha_fn is not None:
            return process.sigma_of_alpha(self.alpha_fn(t))
        return process.sigma_of_log_snr(self.log_snr(t))

    def dalpha_dt(self, t: torch.Tensor) -> torch.Tensor:
        t = _f64(t)
        if self.dalpha_dt_fn is not None:
            return self.dalpha_dt_fn(t)
        dalpha_dlog_snr = processes.get(self.process).dalpha_dlog_snr(self.alpha(t))
        return dalpha_dlog_snr * self.dlog_snr_dt(t)

    def level(self, t: torch.Tensor) -> Level:
        t = _f64(t)
        return Level(
            t, self.log_snr(t), self.dlog_snr_dt(t), self.alpha(t), self.sigma(t), self.dalpha_dt(t)
        )

    # -- inverse and range -------------------------------------------------------------------
    def t_of_log_snr(self, lam: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        """Inverse of lam(t) by bisection on [0, 1] (lam is decreasing), exact to float64."""
        lam = _f64(lam)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # still too little noise: go later in time
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2

    def with_log_snr_range(self, lam_min: float, lam_max: float) -> Schedule:
        """This schedule restricted to [lam_min, lam_max] (clamped to what it reaches)."""
        if not lam_min < lam_max:
            raise ScheduleError(
                f"schedule {self.name}: log_snr_range needs lam_min < lam_max, got {[lam_min, lam_max]}"
            )
        t0, t1 = self.t_of_log_snr(torch.tensor([lam_max, lam_min])).tolist()
        clone = Schedule(
            **{k: v for k, v in self.__dict__.items() if k not in ("log_snr_range", "_t_range")}
        )
        clone.log_snr_range = (lam_min, lam_max)
        clone._t_range = (t0, t1)
        return clone

    @property
    def t_range(self) -> tuple[float, float]:
        """Times [t0, t1] the schedule is used on; the whole [0, 1] if no range was set."""
        return self._t_range or (0.0, 1.0)

    def time_from_uniform(self, u: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Map u ~ U[0, 1] to t ~ U[t0, t1]; returns t and the Jacobian t1 - t0 of the map."""
        t0, t1 = self.t_range
        return t0 + _f64(u) * (t1 - t0), t1 - t0

    def log_snr_endpoints(self) -> tuple[float, float]:
        """(lam_min, lam_max) actually reached on the time range."""
        t0, t1 = self.t_range
        lam = self.log_snr(torch.tensor([t1, t0], dtype=DTYPE))
        return float(lam[0]), float(lam[1])


def _f64(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=DTYPE) if not isinstance(t, torch.Tensor) else t.to(DTYPE)


# -- construction from expressions ----------------------------------------------------------


def _t_fn(c: Compiled) -> TensorFn:
    return lambda t: c(t=t)


def from_expressions(
    name: str,
    process: str,
    *,
    alpha: str | None = None,
    sigma: str | None = None,
    log_snr: str | None = None,
    params: Mapping[str, float] | None = None,
    description: str = "",
) -> Schedule:
    """A schedule from expressions in ``t`` (exactly one of alpha or log_snr)."""
    if process not in PROCESSES:
        raise ScheduleError(f"schedule {name}: process must be one of {PROCESSES}, got {process!r}")
    if (alpha is None) == (log_snr is None):
        raise ScheduleError(f"schedule {name}: declare exactly one of 'alpha' or 'log_snr'")
    # only a continuous path declares a sigma beside its alpha
    if sigma is not None and (not processes.get(process).continuous or alpha is None):
        raise ScheduleError(f"schedule {name}: 'sigma' goes with 'alpha' of a gaussian schedule")
    if log_snr is not None:
        lam = compile_expr(log_snr, ["t"], params)
        return Schedule(name, process, _t_fn(lam), _t_fn(lam.diff("t")), description=description)

    a = compile_expr(alpha, ["t"], params)
    da = a.diff("t")
    if sigma is None:  # the process's path: sigma and lam follow from alpha
        path = processes.get(process)  # Gaussian: variance preserving

        def lam_fn(t):
            return path.log_snr_of_alpha(a(t=t))

        def dlam_fn(t):
            return da(t=t) / path.dalpha_dlog_snr(a(t=t))

        return Schedule(
            name,
            process,
            lam_fn,
            dlam_fn,
            alpha_fn=_t_fn(a),
            dalpha_dt_fn=_t_fn(da),
            description=description,
        )

    # a Gaussian path with its own sigma: lam = 2 log(alpha / sigma)
    s = compile_expr(sigma, ["t"], params)
    ds = s.diff("t")
    sigma_fn = _t_fn(s)

    def lam_fn(t):
        return 2 * (torch.log(a(t=t)) - torch.log(sigma_fn(t)))

    def dlam_fn(t):
        return 2 * (da(t=t) / a(t=t) - ds(t=t) / sigma_fn(t))

    return Schedule(
        name,
        process,
        lam_fn,
        dlam_fn,
        alpha_fn=_t_fn(a),
        sigma_fn=sigma_fn,
        dalpha_dt_fn=_t_fn(da),
        description=description,
    )


def from_density(
    name: str,
    process: str,
    density: Callable[[torch.Tensor], torch.Tensor] | str,
    log_snr_range: tuple[float, float],
    *,
    params: Mapping[str, float] | None = None,
    grid_size: int = 8193,
    description: str = "",
) -> Schedule:
    """A schedule whose uniform time draws lam from the density p(lam) on ``log_snr_range``.

    ``density`` is an expression in ``lam`` or a callable (e.g. an adaptive histogram). It need
    not be normalised. The path is variance preserving (Gaussian) / alpha = sigmoid(lam) (masked).
    """
    if process not in PROCESSES:
        raise ScheduleError(f"schedule {name}: process must be one of {PROCESSES}, got {process!r}")
    fn = _t_fn_lam(compile_expr(density, ["lam"], params)) if isinstance(density, str) else density
    lam_min, lam_max = log_snr_range
    grid = torch.linspace(lam_min, lam_max, grid_size, dtype=DTYPE)
    p = fn(grid).to(DTYPE)
    if not torch.isfinite(p).all() or (p < 0).any() or not (p > 0).any():
        raise ScheduleError(
            f"schedule {name}: density must be finite, >= 0 and not all zero on {list(log_snr_range)}"
        )
    p = p.clamp_min(p.max() * 1e-12)  # keep the inverse CDF strictly monotone
    # survival function t(lam) = P(Lam > lam), trapezoid rule on the grid
    cells = (p[1:] + p[:-1]) / 2 * (grid[1:] - grid[:-1])
    total = cells.sum()
    survival = torch.cat([cells.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=DTYPE)]) / total

    def lam_fn(t):
        # survival is decreasing in lam; interpolate lam as a function of t
        return _interp(_f64(t), survival.flip(0), grid.flip(0))

    def dlam_fn(t):
        return -total / fn(lam_fn(t)).to(DTYPE).clamp_min(p.max() * 1e-12)

    schedule = Schedule(name, process, lam_fn, dlam_fn, description=description)
    schedule.log_snr_range = (lam_min, lam_max)
    schedule._t_range = (0.0, 1.0)
    return schedule


def _t_fn_lam(c: Compiled) -> TensorFn:
    return lambda lam: c(lam=lam)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for torch (xp increasing)."""
    x = x.to(xp.device)
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = (x - x0) / (x1 - x0).clamp_min(1e-300)
    return fp[idx - 1] + w.clamp(0, 1) * (fp[idx] - fp[idx - 1])


# -- the YAML library -------------------------------------------------------------------------

SCHEDULE_KEYS = {"process", "alpha", "sigma", "log_snr", "density", "params", "description"}


def library_file(name: str) -> Path:
    """config/<name> of the working directory (the repository root, where Snakemake runs and
    where an installed wheel finds the libraries), else of this source checkout."""
    here = Path.cwd() / "config" / name
    return here if here.exists() else REPO_ROOT / "config" / name


DEFAULT_LIBRARY = library_file("schedules.yaml")


def build(
    name: str, entry: Mapping[str, Any], log_snr_range: tuple[float, float], source: str = "<spec>"
) -> Schedule:
    """Build a library entry and restrict it to ``log_snr_range``; errors name file and key."""
    where = f"{source}: schedules.{name}"
    if not isinstance(entry, Mapping):
        raise ScheduleError(f"{where}: expected a mapping, got {entry!r}")
    unknown = set(entry) - SCHEDULE_KEYS
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {sorted(SCHEDULE_KEYS)})"
        )
    params = entry.get("params") or {}
    if not isinstance(params, Mapping) or not all(
        isinstance(v, int | float) for v in params.values()
    ):
        raise ScheduleError(f"{where}.params: expected numbers by name, got {params!r}")
    process = entry.get("process")
    try:
        if "density" in entry:
            if {"alpha", "sigma", "log_snr"} & set(entry):
                raise ScheduleError(
                    f"{where}: 'density' cannot be combined with alpha/sigma/log_snr"
                )
            return from_density(
                name,
                process,
                entry["density"],
                log_snr_range,
                params=params,
                description=entry.get("description", ""),
            )
        schedule = from_expressions(
            name,
            process,
            alpha=entry.get("alpha"),
            sigma=entry.get("sigma"),
            log_snr=entry.get("log_snr"),
            params=params,
            description=entry.get("description", ""),
        )
    except ExprError as err:
        raise ScheduleError(f"{where}: {err}") from None
    except ScheduleError as err:
        raise ScheduleError(f"{source}: {err}") from None
    _check_decreasing(schedule, where)
    restricted = schedule.with_log_snr_range(*log_snr_range)
    _check_covers(restricted, where)
    return restricted


def _check_decreasing(schedule: Schedule, where: str, points: int = 2001) -> None:
    """lam(t) finite and strictly decreasing inside (0, 1); the error names a t where not."""
    t = torch.linspace(0.0, 1.0, points + 2, dtype=DTYPE)[1:-1]
    lam = schedule.log_snr(t)
    bad = ~torch.isfinite(lam)
    if bad.any():
        at = float(t[bad][0])
        raise ScheduleError(f"{where}: log-SNR is {float(lam[bad][0])} at t = {at:.6g} in (0, 1)")
    rising = lam[1:] >= lam[:-1]
    if rising.any():
        i = int(rising.nonzero()[0])
        raise ScheduleError(
            f"{where}: log-SNR must decrease with t (more noise later), but lam({float(t[i]):.6g})"
            f" = {float(lam[i]):.6g} <= lam({float(t[i + 1]):.6g}) = {float(lam[i + 1]):.6g}"
        )


def _check_covers(schedule: Schedule, where: str, points: int = 1025) -> None:
    """On its time range the schedule reaches both ends of its log-SNR range, with finite
    lam and dlam/dt: a schedule that stops short would silently train on a narrower range."""
    lam_min, lam_max = schedule.log_snr_range
    reached_min, reached_max = schedule.log_snr_endpoints()
    tol = 1e-6 * (lam_max - lam_min)
    if reached_max < lam_max - tol or reached_min > lam_min + tol:
        raise ScheduleError(
            f"{where}: log-SNR covers only [{reached_min:.6g}, {reached_max:.6g}] on t in [0, 1], "
            f"not the process's log_snr_range [{lam_min:g}, {lam_max:g}]"
        )
    t0, t1 = schedule.t_range
    t = torch.linspace(t0, t1, points, dtype=DTYPE)
    slope = schedule.dlog_snr_dt(t)
    bad = ~torch.isfinite(slope) | (slope > 0)
    if bad.any():
        at = float(t[bad][0])
        raise ScheduleError(
            f"{where}: dlam/dt = {float(slope[bad][0]):.6g} at t = {at:.6g} "
            f"(lam = {float(schedule.log_snr(torch.tensor(at))):.6g}); it must be finite and <= 0"
        )


def load_library(path: str | Path = DEFAULT_LIBRARY) -> dict[str, dict[str, Any]]:
    """The raw entries of a schedule library file (validated when built)."""
    return _load_yaml_mapping(path, "schedules")


def _load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    data = read_yaml(path, f"{what} library", ScheduleError)
    if not isinstance(data, dict):
        raise ScheduleError(f"{path}: expected a mapping of {what} by name")
    return data
