"""Samplers: solvers of a denoiser callable on a noise grid (k-diffusion style).

A grid (``@grid``) is the sequence of noise levels to visit: ``NoiseGrid``, steps + 1 levels
of the run's path, most noise first. A solver (``@sampler``) steps from each level to the next
with one shared signature ``fn(model_fn, schedule, grid, shape, *, generator, device,
progress, **options)``; each sampler names its default grid, so a spec or ``--grid`` may pair
any solver with any grid of its process.

Grids:
- ``uniform``: uniform in the schedule's time from lam_min; a Gaussian grid ends at the data
  (alpha = 1, sigma = 0), a masked one at the end of the range (lam_max).
- ``edm``: EDM's sigma^ grid (rho = 7) over a given sigma^ = e^{-lam/2} range (the spec's
  sampling section: EDM's [0.002, 80] unless set), or by default EDM's range clipped to the
  schedule's log-SNR range; then the data.
- ``cosine`` (masked): MD4's, t = cos(pi/2 (1 - u)) for u uniform; ``schedule`` (masked): the
  log-SNRs of another schedule at uniform times (``--grid NAME`` names the schedule).

Gaussian (``eps_fn(z, level) -> eps_hat``), on the run's own path z = alpha x + sigma eps:
- ``ddpm``: ancestral sampling in VDM's continuous form; with c = 1 - e^{lam_t - lam_s},
  z_s = (alpha_s / alpha_t)(z_t - sigma_t c eps_hat) + sigma_s sqrt(c) xi.
- ``ddim``: x0_hat = (z_t - sigma_t eps_hat) / alpha_t, sigma~ = sigma_s sqrt(c),
  z_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2 sigma~^2) eps_hat + eta sigma~ xi
  (eta = 0 deterministic; eta = 1 is ``ddpm``).
- ``heun``: EDM's 2nd-order sampler (Algorithm 2) in the VE view x^ = z / alpha, stepping in
  the grid's sigma^; optional churn (S_churn, S_min, S_max, S_noise) makes it EDM's
  stochastic sampler. N steps cost 2N - 1 network evaluations.
Their last step lands on the data (alpha = 1, sigma = 0), i.e. returns x0_hat.

Masked (``logits_fn(z, level) -> logits (B, 256, ...)``):
- ``ancestral``: MD4 / MDLM ancestral unmasking; from t to s each masked token is revealed with
  probability (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from softmax(logits); the
  last step reveals every remaining token (alpha = 1). Steps where nothing is revealed skip the
  network. Options (MD4's): top-p (nucleus) sampling of the revealed values, and
  ``final_argmax``: step to the grid's end (lam_max) instead of alpha = 1, then fill the tokens
  still masked by the argmax of the logits there.

``sample_run`` draws images from a trained run as a ``SamplingConfig`` asks
(diffobj.sampling.config: RUN_DIR/sampling.yaml or the command's flags): uint8 NHWC
(Gaussian: EDM's rounding of x * 127.5 + 128), in batches, with a progress bar;
``write_samples`` writes samples.npz and a PNG grid beside it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffobj import processes
from diffobj.devices import gpu_switches
from diffobj.errors import UserError
from diffobj.io import atomic_path
from diffobj.objectives import schedules
from diffobj.objectives.schedules import DTYPE, Level, Schedule
from diffobj.processes.masked import MASK
from diffobj.registry import Registry
from diffobj.sampling.guidance import check_guidance, class_labels, guided

if TYPE_CHECKING:
    from diffobj.sampling.config import SamplingConfig

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]
Progress = Callable[[], None] | None
# standard normal draws of a shape (EDM's ``randn_like``): injectable, to replay a recorded run
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]

EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO = 0.002, 80.0, 7.0


# -- the registries --------------------------------------------------------------------------------


def keyword_defaults(fn: Callable, names: tuple[str, ...]) -> dict[str, Any]:
    """The defaults of a function's keywords ``names``: what an option left unset means."""
    parameters = inspect.signature(fn).parameters
    return {name: parameters[name].default for name in names}


@dataclass(frozen=True)
class Sampler:
    """A solver ``diffobj sample --sampler NAME`` runs, registered once with ``@sampler``.

    ``fn(model_fn, schedule, grid, shape, *, generator, device, progress, **options)`` returns
    the samples (Gaussian: x in data scale; masked: tokens). ``kind``: the process it samples.
    ``grid``: its default grid. ``options``: its keywords a sampling config may set (the spec's
    sampling field ``<kind>_<option>`` or ``<option>``, the flag ``--<option>``); unset, they
    keep the function's defaults."""

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str
    grid: str
    help: str = ""
    options: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        return keyword_defaults(self.fn, self.options)


SAMPLERS: Registry[Sampler] = Registry("sampler")
sampler = partial(SAMPLERS.decorator, Sampler)  # @sampler(name, kind=..., grid=..., ...)


@dataclass(frozen=True)
class Grid:
    """A noise grid ``--grid NAME`` names, registered once with ``@grid``:
    ``fn(schedule, steps, **options) -> NoiseGrid`` on the run's schedule. ``kinds``: the
    processes whose solvers it serves; ``options``: its keywords (as a sampler's)."""

    name: str
    fn: Callable[..., NoiseGrid]
    kinds: tuple[str, ...]
    help: str = ""
    options: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        return keyword_defaults(self.fn, self.options)


GRIDS: Registry[Grid] = Registry("grid")
grid = partial(GRIDS.decorator, Grid)  # @grid(name, kinds=..., ...)


def sampler_names(kind: str | None = None) -> list[str]:
    """The registered samplers (of one process kind), in registration order."""
    return SAMPLERS.names(lambda s: kind in (None, s.kind))


def grid_names(kind: str | None = None) -> list[str]:
    """The registered grids (serving one process kind), in registration order."""
    return GRIDS.names(lambda g: kind is None or kind in g.kinds)


# -- grids -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseGrid:
    """The noise levels a solver visits, most noise first: step i goes from level i to level
    i + 1. ``levels``: steps + 1 levels of the run's path; a Gaussian grid ends at the data
    (alpha 1, sigma 0, log-SNR inf; no time of the schedule, so t is nan), a masked one at the
    end of the schedule's range. ``sigma_hat``: sigma^ = sigma / alpha at each level (EDM's
    noise level, 0 at the data), as the grid set it where it is defined by sigma^."""

    levels: Level
    sigma_hat: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.sigma_hat) - 1


SCHEDULE_GRID = "schedule"  # the grid a schedule's name stands for (``--grid md4_cosine``)


def _then_data(levels: Level, sigma_hat: torch.Tensor) -> NoiseGrid:
    """The grid of ``levels`` (at those sigma^), then the data."""
    data = {"t": math.nan, "log_snr": math.inf, "dlog_snr_dt": math.nan}
    data |= {"alpha": 1.0, "sigma": 0.0, "dalpha_dt": math.nan}
    ended = {
        k: torch.cat([v, torch.tensor([data[k]], dtype=v.dtype)]) for k, v in vars(levels).items()
    }
    return NoiseGrid(Level(**ended), torch.cat([sigma_hat, torch.zeros(1, dtype=sigma_hat.dtype)]))


def _at_times(schedule: Schedule, t: torch.Tensor) -> NoiseGrid:
    """The grid of ``steps + 1`` times, the last the end of the range: a token path visits
    all (its last step reveals what is left); a continuous one the first ``steps``, then the
    data (sigma = 0, which no schedule's range reaches)."""
    if not processes.get(schedule.process).continuous:
        levels = schedule.level(t)
        return NoiseGrid(levels, levels.sigma / levels.alpha)
    levels = schedule.level(t[:-1])
    return _then_data(levels, levels.sigma / levels.alpha)


def noise_grid(schedule: Schedule, steps: int, name: str, **options: Any) -> NoiseGrid:
    """The registered grid ``name`` with its options, of ``steps`` steps on the run's schedule."""
    GRIDS.check(name, f"{schedule.process} grid", grid_names(schedule.process))
    return GRIDS[name].fn(schedule, steps, **options)


def _batch_level(level: Level, i: int, batch: int, device: torch.device) -> Level:
    """Entry i of a grid of levels, repeated for a batch, on the device."""
    return Level(*(v[i].expand(batch).to(device) for v in level.__dict__.values()))


def _scalars(level: Level, i: int) -> tuple[float, float, float]:
    return float(level.alpha[i]), float(level.sigma[i]), float(level.log_snr[i])


@grid("uniform", kinds=("gaussian", "masked"), help="uniform in the schedule's time")
def uniform_grid(schedule: Schedule, steps: int) -> NoiseGrid:
    """``steps`` times from t1 (lam_min, most noise) towards t0, uniform, then t0."""
    t0, t1 = schedule.t_range
    t = t1 + (t0 - t1) * torch.arange(steps, dtype=DTYPE) / steps
    return _at_times(schedule, torch.cat([t, torch.tensor([t0], dtype=DTYPE)]))


def edm_sigmas(
    schedule: Schedule, steps: int, sigma_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """EDM's sigma^ grid (rho = 7) from sigma_max down to sigma_min, then 0.

    ``sigma_range`` (sigma_min, sigma_max) is used as given; None: EDM's [0.002, 80] clipped to
    the schedule's log-SNR range."""
    if sigma_range is not None:
        s_min, s_max = (float(v) for v in sigma_range)
    else:
        lam_min, lam_max = schedule.log_snr_endpoints()
        s_max = min(EDM_SIGMA_MAX, math.exp(-lam_min / 2))
        s_min = max(EDM_SIGMA_MIN, math.exp(-lam_max / 2))
    i = torch.arange(steps, dtype=DTYPE)
    frac = i / max(steps - 1, 1)
    sig = (
        s_max ** (1 / EDM_RHO) + frac * (s_min ** (1 / EDM_RHO) - s_max ** (1 / EDM_RHO))
    ) ** EDM_RHO
    return torch.cat([sig, torch.zeros(1, dtype=DTYPE)])


def sigma_levels(schedule: Schedule, sigma_hat: torch.Tensor) -> Level:
    """The run's level at each sigma^ = e^{-lam/2}: its time by bisection. A variance-preserving
    path (no declared alpha) follows from lam alone, which holds beyond the schedule's reach."""
    lam = -2 * torch.log(sigma_hat.to(DTYPE))
    lv = schedule.level(schedule.t_of_log_snr(lam))
    if schedule.alpha_fn is None:
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return Level(lv.t, lam, lv.dlog_snr_dt, alpha, sigma, lv.dalpha_dt)
    if not bool(torch.isclose(lv.log_snr, lam, rtol=1e-6, atol=1e-6).all()):
        reach = schedule.log_snr(torch.tensor([1.0, 0.0], dtype=DTYPE)).tolist()
        raise UserError(
            f"schedule {schedule.name}: the sampler's sigma range needs log-SNR "
            f"[{float(lam.min()):.3g}, {float(lam.max()):.3g}], the schedule reaches "
            f"[{reach[0]:.3g}, {reach[1]:.3g}] (narrow sampling.sigma_min / sigma_max)"
        )
    return lv


@grid(
    "edm",
    kinds=("gaussian",),
    help="EDM's, rho = 7 in sigma^ (--sigma-min, --sigma-max)",
    options=("sigma_min", "sigma_max"),
)
def edm_grid(
    schedule: Schedule, steps: int, sigma_min: float | None = None, sigma_max: float | None = None
) -> NoiseGrid:
    """``edm_sigmas`` over [sigma_min, sigma_max] (None: EDM's, clipped to the schedule's range)."""
    if (sigma_min is None) != (sigma_max is None):
        raise UserError("--sigma-min and --sigma-max go together")
    if sigma_min is not None and not 0 < sigma_min < sigma_max:
        raise UserError(f"--sigma-min {sigma_min} must be in (0, --sigma-max)")
    sigma_range = None if sigma_min is None else (sigma_min, sigma_max)
    sigmas = edm_sigmas(schedule, steps, sigma_range)
    return _then_data(sigma_levels(schedule, sigmas[:-1]), sigmas[:-1])


@grid("cosine", kinds=("masked",), help="MD4's cosine grid")
def cosine_grid(schedule: Schedule, steps: int) -> NoiseGrid:
    """t = cos(pi/2 (1 - u)) for u uniform, on the normalised time of the range."""
    t0, t1 = schedule.t_range
    u = torch.arange(steps, -1, -1, dtype=DTYPE) / steps
    return _at_times(schedule, t0 + (t1 - t0) * torch.cos(math.pi / 2 * (1 - u)))


@grid(
    SCHEDULE_GRID,
    kinds=("masked",),
    help="another schedule's log-SNRs at its uniform times (--grid SCHEDULE)",
    options=("of",),
)
def schedule_grid(schedule: Schedule, steps: int, of: Mapping[str, Any]) -> NoiseGrid:
    """The times at which this schedule's log-SNR equals that of the schedule ``of`` (its
    library entry, with its name) at uniform times of the same log-SNR range (MD4's cosine grid
    on the linear schedule is the md4_cosine schedule's grid)."""
    entry = dict(of)
    other = schedules.build(entry.pop("name"), entry, schedule.log_snr_range, "grid")
    other = other.with_log_snr_range(*schedule.log_snr_endpoints())
    o0, o1 = other.t_range
    u = torch.arange(steps, -1, -1, dtype=DTYPE) / steps
    return _at_times(schedule, schedule.t_of_log_snr(other.log_snr(o0 + (o1 - o0) * u)))


@dataclass(frozen=True)
class Churn:
    """EDM's stochasticity (Algorithm 2): at sigma^ in [s_min, s_max] noise is added to raise
    sigma^ to sigma^ (1 + gamma), gamma = min(s_churn / steps, sqrt(2) - 1), with the draws
    scaled by s_noise. s_churn = 0 is the deterministic sampler."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    def raised(self, sigma: float, steps: int) -> float:
        if not self.s_min <= sigma <= self.s_max:
            return sigma
        return sigma * (1 + min(self.s_churn / steps, math.sqrt(2) - 1))


# -- Gaussian samplers ----------------------------------------------------------------------------------


def _prior(
    shape: tuple[int, ...], std: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=device) * std
    return (
        z.contiguous(memory_format=torch.channels_last)
        if gpu_switches(device) and z.dim() == 4
        else z
    )


@sampler("ddpm", kind="gaussian", grid="uniform", help="ancestral, VDM's form")
def ddpm(
    eps_fn: ModelFn,
    schedule: Schedule,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> torch.Tensor:
    """Ancestral sampling, VDM's form of the posterior q(z_s | z_t, x = x0_hat)."""
    device = torch.device(device)
    levels = grid.levels
    z = _prior(shape, _scalars(levels, 0)[1], generator, device)
    for i in range(grid.steps):
        a_t, s_t, lam_t = _scalars(levels, i)
        a_s, s_s, lam_s = _scalars(levels, i + 1)
        eps = eps_fn(z, _batch_level(levels, i, shape[0], device)).float()
        c = -math.expm1(lam_t - lam_s)
        z = (a_s / a_t) * (z - s_t * c * eps)
        if s_s > 0:
            z = z + s_s * math.sqrt(c) * torch.randn(shape, generator=generator, device=device)
        if progress:
            progress()
    return z


@sampler("ddim", kind="gaussian", grid="uniform", help="DDIM (--eta, default 0)", options=("eta",))
def ddim(
    eps_fn: ModelFn,
    schedule: Schedule,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) on the schedule's path; returns x in data scale."""
    if not 0 <= eta <= 1:
        raise UserError(f"--eta must be in [0, 1], got {eta}")
    device = torch.device(device)
    levels = grid.levels
    z = _prior(shape, _scalars(levels, 0)[1], generator, device)
    for i in range(grid.steps):
        a_t, s_t, lam_t = _scalars(levels, i)
        a_s, s_s, lam_s = _scalars(levels, i + 1)
        eps = eps_fn(z, _batch_level(levels, i, shape[0], device)).float()
        x0 = (z - s_t * eps) / a_t
        c = -math.expm1(lam_t - lam_s)
        noise_std = eta * s_s * math.sqrt(c)
        z = a_s * x0 + math.sqrt(max(s_s**2 - noise_std**2, 0.0)) * eps
        if noise_std > 0:
            z = z + noise_std * torch.randn(shape, generator=generator, device=device)
        if progress:
            progress()
    return z


@sampler(
    "heun",
    kind="gaussian",
    grid="edm",
    help="EDM's (N steps = 2N - 1 network evaluations)",
    options=("s_churn", "s_min", "s_max", "s_noise"),
)
def heun(
    eps_fn: ModelFn,
    schedule: Schedule,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float | None = None,
    s_noise: float = 1.0,
    noise: NoiseSource | None = None,
) -> torch.Tensor:
    """EDM's Heun sampler in the VE view; D(x^) = x^ - sigma^ eps_hat. ``s_*``: ``Churn``
    (s_max None: no limit).

    ``noise`` replaces the generator's draws (the prior's, then one per step when churning,
    whether or not that step churns: EDM's order of draws)."""
    if s_churn < 0 or s_noise <= 0:
        raise UserError("--s-churn must be >= 0 and --s-noise > 0")
    device = torch.device(device)
    churn = Churn(s_churn, s_min, math.inf if s_max is None else s_max, s_noise)
    sigmas, levels, steps = grid.sigma_hat, grid.levels, grid.steps
    raised = torch.tensor([churn.raised(float(s), steps) for s in sigmas[:-1]], dtype=DTYPE)
    # the run's level at each raised sigma^, computed once (without churn: the grid's own)
    raised_levels = sigma_levels(schedule, raised) if churn.s_churn > 0 else levels

    def d(x_hat: torch.Tensor, lv: Level, i: int) -> torch.Tensor:
        """dx^/dsigma^ = (x^ - D) / sigma^ = eps_hat at level i of ``lv``."""
        z = x_hat * float(lv.alpha[i])
        return eps_fn(z, _batch_level(lv, i, shape[0], device)).to(x_hat.dtype)

    if noise is None:
        x = _prior(shape, float(sigmas[0]), generator, device)
    else:
        x = noise(shape).to(device) * float(sigmas[0])
    for i in range(steps):
        s_cur, s_hat, s_next = float(sigmas[i]), float(raised[i]), float(sigmas[i + 1])
        if churn.s_churn > 0:
            draw = noise(shape) if noise else torch.randn(shape, generator=generator, device=device)
            x = x + math.sqrt(s_hat**2 - s_cur**2) * churn.s_noise * draw.to(x)
        slope = d(x, raised_levels, i)
        x_next = x + (s_next - s_hat) * slope
        if s_next > 0:
            x_next = x + (s_next - s_hat) * (slope + d(x_next, levels, i + 1)) / 2
        x = x_next
        if progress:
            progress()
    return x


# -- masked sampler ---------------------------------------------------------------------------------------


def sample_categorical(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gumbel-max in float64 (float32 Gumbel noise lowers the effective temperature)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() + gumbel).argmax(dim=-1)


def reveal_probability(alpha_t: float, alpha_s: float) -> float:
    """P(a token masked at t is unmasked at s < t) = (alpha_s - alpha_t) / (1 - alpha_t)."""
    return (alpha_s - alpha_t) / (1 - alpha_t)


def top_p_logits(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter over the last axis: keep the smallest set of most probable values whose
    total probability is >= p (values tied with the least probable kept one stay too, as in
    MD4's threshold search); the others get -inf."""
    probs = torch.softmax(logits.double(), dim=-1)
    ranked = probs.sort(dim=-1, descending=True).values
    # the kept set ends at the first rank whose cumulative mass reaches p
    last = (ranked.cumsum(dim=-1) < p).sum(dim=-1, keepdim=True).clamp_max(ranked.shape[-1] - 1)
    threshold = ranked.gather(-1, last)
    return logits.masked_fill(probs < threshold, -math.inf)


@sampler(
    "ancestral",
    kind="masked",
    grid="uniform",
    help="MD4's (--top-p, --final-argmax)",
    options=("top_p", "final_argmax"),
)
def ancestral(
    logits_fn: ModelFn,
    schedule: Schedule,
    grid: NoiseGrid,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    top_p: float | None = None,
    final_argmax: bool = False,
) -> torch.Tensor:
    """MD4 ancestral unmasking from all-masked tokens; returns int64 tokens in 0..255."""
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    device = torch.device(device)
    levels, steps = grid.levels, grid.steps
    alphas = levels.alpha.tolist()
    if not final_argmax:
        alphas[-1] = 1.0  # the last step reveals every token still masked
    z = torch.full(shape, MASK, dtype=torch.long, device=device)
    for i in range(steps):
        reveal_prob = reveal_probability(alphas[i], alphas[i + 1])
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        reveal = (z == MASK) & (u < reveal_prob)
        if bool(reveal.any()):
            logits = logits_fn(z, _batch_level(levels, i, shape[0], device))
            chosen = logits.movedim(1, -1)[reveal]  # (revealed tokens, 256)
            if top_p is not None:
                chosen = top_p_logits(chosen, top_p)
            z[reveal] = sample_categorical(chosen, generator)
        if progress:
            progress()
    left = z == MASK
    if final_argmax and bool(left.any()):  # MD4's decode: the mode of the logits at lam_max
        logits = logits_fn(z, _batch_level(levels, steps, shape[0], device))
        z[left] = logits.movedim(1, -1)[left].argmax(dim=-1)
    return z


# -- from a trained run -------------------------------------------------------------------------------------


def to_uint8(samples: torch.Tensor, kind: str) -> np.ndarray:
    """NCHW samples -> uint8 NHWC: Gaussian x in [-1, 1] rounded as EDM, masked tokens as is."""
    return processes.get(kind).to_uint8(samples).permute(0, 2, 3, 1).cpu().numpy()


def _not_an_option(option: str, of: str) -> UserError:
    """The error of an option ``of`` (a sampler or a grid) does not take: who takes it."""
    takers = [f"the {n} sampler" for n, s in SAMPLERS.items() if option in s.options]
    takers += [f"the {n} grid" for n, g in GRIDS.items() if option in g.options]
    return UserError(
        f"--{option.replace('_', '-')} applies to {' / '.join(takers) or 'nothing'} only, not {of}"
    )


def check_sampler(
    kind: str | None,
    sampler: str,
    steps: int,
    num: int,
    batch_size: int,
    options: Mapping[str, Any] | None = None,
) -> None:
    """UserError for a bad request; ``kind`` None checks everything but the process.
    ``options``: the sampler's keywords set (their values are checked by the sampler)."""
    SAMPLERS.check(sampler, "--sampler", sorted(sampler_names()))
    if kind is not None and sampler not in sampler_names(kind):
        raise UserError(
            f"--sampler {sampler}: not a sampler of the {kind} process "
            f"(use one of {sampler_names(kind)})"
        )
    for name, value in (("steps", steps), ("num", num), ("batch-size", batch_size)):
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    for option in options or {}:
        if option not in SAMPLERS[sampler].options:
            raise _not_an_option(option, sampler)


def check_grid(sampler: str, grid: Mapping[str, Any]) -> None:
    """UserError unless ``grid`` (its name and options) is a grid of the sampler's process."""
    kind = SAMPLERS[sampler].kind
    GRIDS.check(grid["name"], f"grid of {sampler}", grid_names(kind))
    for option in set(grid) - {"name"}:
        if option not in GRIDS[grid["name"]].options:
            raise _not_an_option(option, f"the {grid['name']} grid")


def sample_run(
    run_dir: str | Path,
    sampling: SamplingConfig,
    *,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    compile: bool = False,
) -> np.ndarray:
    """``sampling.num`` uint8 NHWC images from a trained run. Batch b draws from a generator
    seeded by (sampling.seed, b): the output depends on the seed and the batch size, nothing
    else.

    A class-conditional run draws sample i of class i mod K (``guidance.class_labels``) with
    classifier-free guidance of scale ``sampling.guidance`` (0: the conditional model)."""
    from tqdm import tqdm

    from diffobj.runs import load_run, make_model_fn
    from diffobj.seeds import SAMPLE, step_seed

    name, steps, num = sampling.sampler, sampling.steps, sampling.num
    check_sampler(None, name, steps, num, batch_size, sampling.options)
    check_grid(name, sampling.grid)
    run = load_run(run_dir, device)
    check_sampler(run.kind, name, steps, num, batch_size, sampling.options)
    grid = noise_grid(run.schedule, steps, **sampling.grid)
    make = run.conditioned  # labels -> the denoiser callable (None: unconditional)
    if compile:
        net = torch.compile(run.net)
        make = lambda labels: make_model_fn(net, run.config, run.device, labels)  # noqa: E731
    num_classes = int(run.config.model.get("num_classes", 0) or 0)
    check_guidance(sampling.guidance, num_classes)
    labels = class_labels(num, num_classes)

    def model_fn_for(start: int, size: int) -> ModelFn:
        if labels is None:
            return make(None)
        batch_labels = torch.from_numpy(labels[start : start + size]).to(run.device)
        return guided(make, batch_labels, num_classes, sampling.guidance, run.kind)

    fn = SAMPLERS[name].fn
    batches = math.ceil(num / batch_size)
    out = []
    with (
        tqdm(
            total=batches * steps,
            desc=f"{name} x{num}",
            unit="step",
            disable=not progress,
            mininterval=1.0,
            dynamic_ncols=True,
        ) as bar,
        torch.no_grad(),
    ):
        for b in range(batches):
            size = min(batch_size, num - b * batch_size)
            seed = step_seed(sampling.seed, b, SAMPLE)
            generator = torch.Generator(device=run.device).manual_seed(seed)
            x = fn(
                model_fn_for(b * batch_size, size),
                run.schedule,
                grid,
                (size, *run.image_shape),
                generator=generator,
                device=run.device,
                progress=lambda: bar.update(1),
                **sampling.options,
            )
            out.append(to_uint8(x, run.kind))
    return np.concatenate(out)


def write_samples(images: np.ndarray, out: str | Path, labels: np.ndarray | None = None) -> Path:
    """samples.npz (key ``images``, uint8 NHWC; ``labels``, int64, for a class-conditional
    run) and a PNG grid beside it; returns the PNG path."""
    out = Path(out)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    png = out.with_suffix(".png")
    with atomic_path(png) as tmp:
        save_png(image_grid(images), tmp)
    return png


def image_grid(images: np.ndarray, max_images: int = 100, min_cell: int = 32) -> np.ndarray:
    """Up to ``max_images`` images tiled in a square-ish grid, upscaled (nearest) to >= min_cell px."""
    images = images[:max_images]
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(min_cell / max(h, w)))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img
    return grid


def save_png(grid: np.ndarray, path: Path) -> None:
    array = grid[..., 0] if grid.shape[-1] == 1 else grid
    try:
        from PIL import Image
    except ImportError:  # the GPU image may lack Pillow; matplotlib writes PNGs too
        import matplotlib.image

        matplotlib.image.imsave(path, array, cmap="gray" if array.ndim == 2 else None, format="png")
        return
    Image.fromarray(array).save(path, format="PNG")
