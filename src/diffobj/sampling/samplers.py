"""Samplers: plain functions of a denoiser callable and a schedule (k-diffusion style).

Gaussian (``eps_fn(z, level) -> eps_hat``), on the run's own path z = alpha x + sigma eps:
- ``ddpm``: ancestral sampling in VDM's continuous form; with c = 1 - e^{lam_t - lam_s},
  z_s = (alpha_s / alpha_t)(z_t - sigma_t c eps_hat) + sigma_s sqrt(c) xi.
- ``ddim``: x0_hat = (z_t - sigma_t eps_hat) / alpha_t, sigma~ = sigma_s sqrt(c),
  z_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2 sigma~^2) eps_hat + eta sigma~ xi
  (eta = 0 deterministic; eta = 1 is ``ddpm``).
- ``heun``: EDM's 2nd-order sampler (Algorithm 2) in the VE view x^ = z / alpha,
  sigma^ = e^{-lam/2}, on EDM's grid (rho = 7) over a given sigma^ range (the spec's sampling
  section: EDM's [0.002, 80] unless set), or by default EDM's range clipped to the schedule's
  log-SNR range; optional churn (S_churn, S_min, S_max, S_noise) makes it EDM's stochastic
  sampler. N steps cost 2N - 1 network evaluations.
DDPM and DDIM step uniformly in the schedule's time from lam_min; their last step lands on the
data (alpha = 1, sigma = 0), i.e. returns x0_hat.

Masked (``logits_fn(z, level) -> logits (B, 256, ...)``):
- ``ancestral``: MD4 / MDLM ancestral unmasking; from t to s each masked token is revealed with
  probability (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from softmax(logits); the
  last step reveals every remaining token (alpha = 1). Steps where nothing is revealed skip the
  network. Options (MD4's): the time grid (``masked_times``: uniform in t, MD4's cosine grid, or
  the log-SNRs of any schedule at uniform times), top-p (nucleus) sampling of the revealed
  values, and ``final_argmax``: step to the end of the range (lam_max) instead of alpha = 1,
  then fill the tokens still masked by the argmax of the logits there.

``sample_run`` draws images from a trained run: uint8 NHWC (Gaussian: EDM's rounding of
x * 127.5 + 128), in batches, with a progress bar; ``write_samples`` writes samples.npz and a
PNG grid beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffobj import processes
from diffobj.devices import gpu_switches
from diffobj.errors import UserError
from diffobj.io import atomic_path
from diffobj.objectives.schedules import DTYPE, Level, Schedule
from diffobj.processes.masked import MASK
from diffobj.registry import Registry
from diffobj.sampling.guidance import check_guidance, class_labels, guided

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]
Progress = Callable[[], None] | None
# standard normal draws of a shape (EDM's ``randn_like``): injectable, to replay a recorded run
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]

EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO = 0.002, 80.0, 7.0


# -- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    """A sampler ``diffobj sample --sampler NAME`` runs, registered once with ``@sampler``.

    ``fn(model_fn, schedule, shape, steps, *, generator, device, progress, **options)`` returns
    the samples (Gaussian: x in data scale; masked: tokens). ``kind``: the process it samples.
    ``options``: the option groups it takes beyond those ("eta": --eta; "heun": the sigma range
    and churn; "masked": --grid, --top-p, --final-argmax). ``spec_flags(sampling, library)``:
    the ``diffobj sample`` flags its options take from the spec's sampling section (library:
    the schedule library as the command names it), for sample.smk."""

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str
    help: str = ""
    options: tuple[str, ...] = ()
    spec_flags: Callable[[Any, str], str] = lambda sampling, library: ""


SAMPLERS: Registry[Sampler] = Registry("sampler")
sampler = partial(SAMPLERS.decorator, Sampler)  # @sampler(name, kind=..., ...)


def sampler_names(kind: str | None = None) -> list[str]:
    """The registered samplers (of one process kind), in registration order."""
    return SAMPLERS.names(lambda s: kind in (None, s.kind))


def _with_option(option: str) -> list[str]:
    return SAMPLERS.names(lambda s: option in s.options)


# -- grids -------------------------------------------------------------------------------------------


def time_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """``steps`` times from t1 (lam_min, most noise) towards t0, uniform in the schedule's time."""
    t0, t1 = schedule.t_range
    return t1 + (t0 - t1) * torch.arange(steps, dtype=DTYPE) / steps


def _batch_level(level: Level, i: int, batch: int, device: torch.device) -> Level:
    """Entry i of a grid of levels, repeated for a batch, on the device."""
    return Level(*(v[i].expand(batch).to(device) for v in level.__dict__.values()))


def _scalars(level: Level, i: int) -> tuple[float, float, float]:
    return float(level.alpha[i]), float(level.sigma[i]), float(level.log_snr[i])


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


@sampler("ddpm", kind="gaussian", help="ancestral, VDM's form")
def ddpm(
    eps_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> torch.Tensor:
    """Ancestral sampling, VDM's form of the posterior q(z_s | z_t, x = x0_hat)."""
    device = torch.device(device)
    levels = schedule.level(time_grid(schedule, steps))
    z = _prior(shape, _scalars(levels, 0)[1], generator, device)
    for i in range(steps):
        a_t, s_t, lam_t = _scalars(levels, i)
        a_s, s_s, lam_s = _scalars(levels, i + 1) if i + 1 < steps else (1.0, 0.0, math.inf)
        eps = eps_fn(z, _batch_level(levels, i, shape[0], device)).float()
        c = -math.expm1(lam_t - lam_s)
        z = (a_s / a_t) * (z - s_t * c * eps)
        if s_s > 0:
            z = z + s_s * math.sqrt(c) * torch.randn(shape, generator=generator, device=device)
        if progress:
            progress()
    return z


@sampler("ddim", kind="gaussian", help="DDIM (--eta, default 0)", options=("eta",))
def ddim(
    eps_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    eta: float = 0.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) on the schedule's path; returns x in data scale."""
    device = torch.device(device)
    levels = schedule.level(time_grid(schedule, steps))
    z = _prior(shape, _scalars(levels, 0)[1], generator, device)
    for i in range(steps):
        a_t, s_t, lam_t = _scalars(levels, i)
        a_s, s_s, lam_s = _scalars(levels, i + 1) if i + 1 < steps else (1.0, 0.0, math.inf)
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


def _heun_flags(sampling: Any, library: str) -> str:
    """EDM's sigma range and churn (spec: sampling)."""
    args = f" --sigma-min {sampling.sigma_min} --sigma-max {sampling.sigma_max}"
    if sampling.s_churn > 0:
        args += (
            f" --s-churn {sampling.s_churn} --s-min {sampling.s_min} --s-noise {sampling.s_noise}"
        )
        args += f" --s-max {sampling.s_max}" if sampling.s_max is not None else ""
    return args


@sampler(
    "heun",
    kind="gaussian",
    help="EDM's (N steps = 2N - 1 network evaluations)",
    options=("heun",),
    spec_flags=_heun_flags,
)
def heun(
    eps_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    sigma_range: tuple[float, float] | None = None,
    churn: Churn | None = None,
    noise: NoiseSource | None = None,
) -> torch.Tensor:
    """EDM's Heun sampler in the VE view; D(x^) = x^ - sigma^ eps_hat.

    ``noise`` replaces the generator's draws (the prior's, then one per step when churning,
    whether or not that step churns: EDM's order of draws)."""
    device = torch.device(device)
    churn = churn or Churn()
    sigmas = edm_sigmas(schedule, steps, sigma_range)
    raised = torch.tensor([churn.raised(float(s), steps) for s in sigmas[:-1]], dtype=DTYPE)
    # the run's level at each grid sigma^ and each raised one, computed once
    levels, raised_levels = sigma_levels(schedule, sigmas[:-1]), sigma_levels(schedule, raised)

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


MASKED_GRIDS = ("uniform", "cosine")  # or the name of a schedule


def masked_times(schedule: Schedule, steps: int, grid: str | Schedule = "uniform") -> torch.Tensor:
    """``steps + 1`` times from t1 (lam_min, all masked) down to t0 (lam_max).

    ``uniform``: uniform in the schedule's time. ``cosine``: MD4's grid, t = cos(pi/2 (1 - u))
    for u uniform, on the normalised time of the range. A Schedule: the times at which this
    schedule's log-SNR equals that schedule's at uniform times of the same log-SNR range (MD4's
    cosine grid on the linear schedule is the md4_cosine schedule's grid)."""
    t0, t1 = schedule.t_range
    if isinstance(grid, Schedule):
        other = grid.with_log_snr_range(*schedule.log_snr_endpoints())
        o0, o1 = other.t_range
        u = torch.arange(steps, -1, -1, dtype=DTYPE) / steps
        return schedule.t_of_log_snr(other.log_snr(o0 + (o1 - o0) * u))
    if grid == "uniform":  # as time_grid, so the default grid is bit for bit the old one
        return torch.cat([time_grid(schedule, steps), torch.tensor([t0], dtype=DTYPE)])
    if grid == "cosine":
        u = torch.arange(steps, -1, -1, dtype=DTYPE) / steps
        return t0 + (t1 - t0) * torch.cos(math.pi / 2 * (1 - u))
    raise UserError(
        f"masked grid: expected one of {list(MASKED_GRIDS)} or a schedule, got {grid!r}"
    )


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


def _ancestral_flags(sampling: Any, library: str) -> str:
    """MD4's options, only where the spec sets them (so default commands stay as they were)."""
    opts = ""
    if sampling.masked_grid != "uniform":
        opts += f" --grid {sampling.masked_grid}"
    if sampling.masked_grid not in MASKED_GRIDS:
        opts += f" --schedules-library {library}"
    if sampling.masked_top_p is not None:
        opts += f" --top-p {sampling.masked_top_p}"
    if sampling.masked_final_argmax:
        opts += " --final-argmax"
    return opts


@sampler(
    "ancestral",
    kind="masked",
    help="MD4's (--grid, --top-p, --final-argmax)",
    options=("masked",),
    spec_flags=_ancestral_flags,
)
def ancestral(
    logits_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    grid: str | Schedule = "uniform",
    top_p: float | None = None,
    final_argmax: bool = False,
) -> torch.Tensor:
    """MD4 ancestral unmasking from all-masked tokens; returns int64 tokens in 0..255."""
    device = torch.device(device)
    levels = schedule.level(masked_times(schedule, steps, grid))
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


def check_sampler(
    kind: str | None, sampler: str, steps: int, num: int, batch_size: int, eta: float | None
) -> None:
    """UserError for a bad request; ``kind`` None checks everything but the process."""
    SAMPLERS.check(sampler, "--sampler", sorted(sampler_names()))
    if kind is not None and sampler not in sampler_names(kind):
        raise UserError(
            f"--sampler {sampler}: not a sampler of the {kind} process "
            f"(use one of {sampler_names(kind)})"
        )
    for name, value in (("steps", steps), ("num", num), ("batch-size", batch_size)):
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if eta is not None and sampler not in _with_option("eta"):
        raise UserError(
            f"--eta applies to the {' / '.join(_with_option('eta'))} sampler only, not {sampler}"
        )
    if eta is not None and not 0 <= eta <= 1:
        raise UserError(f"--eta must be in [0, 1], got {eta}")


def masked_options(
    sampler: str,
    grid: str,
    top_p: float | None,
    final_argmax: bool,
    log_snr_range: tuple[float, float],
    schedules_library: str | Path | None,
) -> dict:
    """The ancestral sampler's options, checked; a grid naming a schedule is built from the
    library file. Empty for the defaults (so Gaussian samplers accept them)."""
    from diffobj.objectives import schedules

    if (grid, top_p, final_argmax) == ("uniform", None, False):
        return {}
    if sampler not in _with_option("masked"):
        raise UserError(
            "--grid, --top-p and --final-argmax apply to the "
            f"{' / '.join(_with_option('masked'))} sampler only"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    options = {"top_p": top_p, "final_argmax": final_argmax, "grid": grid}
    if grid not in MASKED_GRIDS:
        path = Path(schedules_library or schedules.DEFAULT_LIBRARY)
        library = schedules.load_library(path)
        if grid not in library:
            raise UserError(
                f"--grid: {grid!r} is neither {' nor '.join(MASKED_GRIDS)} nor a schedule of {path}"
            )
        options["grid"] = schedules.build(grid, library[grid], log_snr_range, str(path))
    return options


def sample_run(
    run_dir: str | Path,
    sampler: str,
    steps: int,
    num: int,
    *,
    eta: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    compile: bool = False,
    grid: str = "uniform",
    top_p: float | None = None,
    final_argmax: bool = False,
    schedules_library: str | Path | None = None,
    heun_options: dict | None = None,
    guidance: float = 0.0,
) -> np.ndarray:
    """``num`` uint8 NHWC images from a trained run. Batch b draws from a generator seeded by
    (seed, b): the output depends on the seed and the batch size, nothing else. ``grid``,
    ``top_p`` and ``final_argmax`` are the ancestral sampler's options (see ``ancestral``);
    ``heun_options``: the heun sampler's sigma_range and churn keywords.

    A class-conditional run draws sample i of class i mod K (``guidance.class_labels``) with
    classifier-free guidance of scale ``guidance`` (0: the conditional model)."""
    from tqdm import tqdm

    from diffobj.runs import load_run, make_model_fn
    from diffobj.seeds import SAMPLE, step_seed

    check_sampler(None, sampler, steps, num, batch_size, eta)
    run = load_run(run_dir, device)
    check_sampler(run.kind, sampler, steps, num, batch_size, eta)
    log_snr_range = tuple(run.config.process["log_snr_range"])
    extra = masked_options(sampler, grid, top_p, final_argmax, log_snr_range, schedules_library)
    make = run.conditioned  # labels -> the denoiser callable (None: unconditional)
    if compile:
        net = torch.compile(run.net)
        make = lambda labels: make_model_fn(net, run.config, run.device, labels)  # noqa: E731
    num_classes = int(run.config.model.get("num_classes", 0) or 0)
    check_guidance(guidance, num_classes)
    labels = class_labels(num, num_classes)

    def model_fn_for(start: int, size: int) -> ModelFn:
        if labels is None:
            return make(None)
        batch_labels = torch.from_numpy(labels[start : start + size]).to(run.device)
        return guided(make, batch_labels, num_classes, guidance, run.kind)

    entry = SAMPLERS[sampler]
    fn = entry.fn
    if "eta" in entry.options:
        extra = {"eta": eta or 0.0}
    if heun_options and "heun" not in entry.options:
        raise UserError(f"sigma range and churn options are heun's, not {sampler}'s")
    extra |= heun_options or {}
    batches = math.ceil(num / batch_size)
    out = []
    with (
        tqdm(
            total=batches * steps,
            desc=f"{sampler} x{num}",
            unit="step",
            disable=not progress,
            mininterval=1.0,
            dynamic_ncols=True,
        ) as bar,
        torch.no_grad(),
    ):
        for b in range(batches):
            size = min(batch_size, num - b * batch_size)
            generator = torch.Generator(device=run.device).manual_seed(step_seed(seed, b, SAMPLE))
            x = fn(
                model_fn_for(b * batch_size, size),
                run.schedule,
                (size, *run.image_shape),
                steps,
                generator=generator,
                device=run.device,
                progress=lambda: bar.update(1),
                **extra,
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
