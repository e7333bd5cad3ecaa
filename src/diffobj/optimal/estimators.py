"""The optimal-loss estimators, each registered once with ``@estimator``: a plan, for a batch
of queries, of the candidate points of the posterior sum and of how each query treats its own
source (``SubsetPlan``; the sum itself is diffobj.optimal.gaussian_posterior's).

- exact: the softmax runs over all N points (one matmul per chunk of data, online softmax).
- snis: over a random subset of L points (self-normalised importance sampling).
- dol: L - 1 random other points plus the query's own source.
- cdol: as dol with the source's weight divided by C. Default (``default_c``):
  C = (N - 1)/(L - 1) · (1 + (N - L)/(N - 1)). The first factor is the ratio at which the L - 1
  random others stand for the N - 1 others; the second divides the source's weight further,
  ~2x for L << N and not at all for L = N (where cDOL is exact only with C = 1), because the
  self-normalised sum of L - 1 skewed weights is usually below its mean. Measured
  (benchmarks/cdol_c.py, mean rmse / J* over 6 levels and L in {16, 64, 256} resp. {64, 512}):
  digits (N = 1797) default 0.298, 2N/L 0.300, 4N/L 0.302, N/L 0.315; CIFAR-shaped
  (N = 4000) default 0.138, 2N/L 0.136, 4N/L 0.147, N/L 0.214. The bias changes sign with the
  noise level (too high above sigma*, too low below), so no C is unbiased at every level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from diffobj import processes
from diffobj.errors import UserError
from diffobj.registry import Registry

ESTIMATORS: Registry[Estimator] = Registry("estimator")  # registered below (@estimator)


@dataclass(frozen=True)
class SubsetPlan:
    """The candidate set of one batch of queries, and how each query treats its source."""

    candidates: torch.Tensor  # (L, D)
    exclude: torch.Tensor  # (B,)
    self_offset: torch.Tensor  # (B,)


def plan_candidates(
    data: torch.Tensor,
    src: torch.Tensor,
    estimator: str,
    subset: int | None,
    C: float | None,
    generator: torch.Generator | None,
) -> SubsetPlan:
    """Candidates for a batch with sources ``src``: the registered estimator's ``fn``."""
    return ESTIMATORS[estimator].fn(data, src, subset, C, generator)


@dataclass(frozen=True)
class Estimator:
    """An optimal-loss estimator (``--estimator NAME``, spec ``optimal_loss.estimator``),
    registered once with ``@estimator``.

    ``fn(data, src, subset, C, generator) -> SubsetPlan``: the candidates of one batch of
    queries with sources ``src`` and how each treats its source. ``smallest_subset``: the
    least subset size L it takes (None: no subset, all N points). ``c_value(n_data, subset,
    C)``: the table's C column. ``processes``: the process kinds it serves. ``in_spec``: a
    choice of the spec's ``optimal_loss.estimator`` (else only of the command and the study)."""

    name: str
    fn: Callable[..., SubsetPlan]
    smallest_subset: int | None = None
    c_value: Callable[[int, int | None, float | None], float] = lambda n, subset, C: math.nan
    processes: tuple[str, ...] = ("gaussian",)
    in_spec: bool = True

    @property
    def uses_subset(self) -> bool:
        return self.smallest_subset is not None


estimator = partial(ESTIMATORS.decorator, Estimator)  # @estimator(name, ...)


def estimator_names(process: str | None = None, in_spec: bool = False) -> list[str]:
    """The registered estimators (of one process kind; only the spec's choices), in order."""
    return ESTIMATORS.names(
        lambda e: process in (None, *e.processes) and (e.in_spec or not in_spec)
    )


def study_kinds() -> list[str]:
    """The process kinds the estimator study (``convergence_study``) is for: those with subset
    estimators to compare with the exact one."""
    return [
        kind
        for kind in processes.KINDS
        if any(ESTIMATORS[name].uses_subset for name in estimator_names(kind))
    ]


@estimator("exact", processes=("gaussian", "masked"))
def _exact(data, src, subset, C, generator) -> SubsetPlan:
    """All N points."""
    zero = torch.zeros(len(src), dtype=torch.float64, device=data.device)
    return SubsetPlan(data, src, zero)


def _random_subset(data, src, subset, generator):
    """L random points (one shared subset per batch) and each source's position among them."""
    n_data, device = len(data), data.device
    assert subset is not None
    chosen = torch.randperm(n_data, generator=generator)[:subset].to(device)
    position = torch.full((n_data,), -1, dtype=torch.long, device=device)
    position[chosen] = torch.arange(subset, device=device)
    zero = torch.zeros(len(src), dtype=torch.float64, device=device)
    return chosen, position[src], zero


@estimator("snis", smallest_subset=1)
def _snis(data, src, subset, C, generator) -> SubsetPlan:
    """L random points; a source that falls in them is handled by the self term."""
    chosen, pos, zero = _random_subset(data, src, subset, generator)
    offset = torch.where(pos >= 0, zero, torch.full_like(zero, -math.inf))
    return SubsetPlan(data[chosen], pos, offset)


def _dol_plan(data, src, subset, c_value, generator) -> SubsetPlan:
    """The first L - 1 points of a random L-subset other than the source, plus the source with
    weight 1/C, so every query sees exactly L - 1 random others."""
    chosen, pos, zero = _random_subset(data, src, subset, generator)
    among_first = (pos >= 0) & (pos < subset - 1)
    exclude = torch.where(among_first, pos, torch.full_like(pos, subset - 1))
    return SubsetPlan(data[chosen], exclude, zero - math.log(c_value))


def _cdol_c(n_data: int, subset: int | None, C: float | None) -> float:
    return float(C) if C is not None else default_c(n_data, subset)


@estimator("dol", smallest_subset=2, c_value=lambda n, subset, C: 1.0, in_spec=False)
def _dol(data, src, subset, C, generator) -> SubsetPlan:
    """DOL: the source's weight divided by C = 1."""
    return _dol_plan(data, src, subset, 1.0, generator)


@estimator("cdol", smallest_subset=2, c_value=_cdol_c)
def _cdol(data, src, subset, C, generator) -> SubsetPlan:
    """cDOL: the source's weight divided by C (default ``default_c``, about 2N/L)."""
    return _dol_plan(data, src, subset, float(_cdol_c(len(data), subset, C)), generator)


def default_c(n_data: int, subset: int) -> float:
    """cDOL's default self-weight divisor (see the module doc): about 2N/L for L << N, 1 at N."""
    return (n_data - 1) / (subset - 1) * (1 + (n_data - subset) / (n_data - 1))


def check_estimator(
    estimator: str, n_data: int, subset: int | None, C: float | None, flag: str = "--subset"
) -> None:
    """UserError for an unknown estimator, a subset size outside 1..N (dol/cdol: 2..N), C <= 0."""
    ESTIMATORS.check(estimator, "--estimator")
    smallest = ESTIMATORS[estimator].smallest_subset
    if smallest is None:
        return
    if subset is None:
        raise UserError(f"--estimator {estimator} needs {flag} L ({smallest} <= L <= N = {n_data})")
    if not smallest <= subset <= n_data:
        raise UserError(
            f"{flag} {subset}: must be in {smallest}..{n_data} (the data has N = {n_data} points)"
        )
    if C is not None and not C > 0:
        raise UserError(f"--C {C}: must be positive")
