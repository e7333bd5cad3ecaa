"""Negative log-likelihood bounds in bits per dimension, for both processes.

Gaussian (VDM, Kingma et al. 2021), data x = u8 / 127.5 - 1 on the 256-value grid v_k, on the
schedule's log-SNR range [lam_min, lam_max]:

    -log P(x) <= KL(q(z_1|x) || N(0, I))                        prior, at lam_min
               + E[-log p(x | z_0)]                              reconstruction, at lam_max
               + 1/2 ∫ E||eps - eps_hat(z_lam, lam)||^2 dlam      diffusion

The prior and reconstruction depend on lam only (z rescaled to the variance-preserving path,
alpha^2 = sigmoid(lam)). The decoder is VDM's factorised discrete one: p(x_d = v_k | z_0) is
the softmax over k of log N(z_0 / alpha_0; v_k, e^{-lam_max}), so the bound is on the
probability of the discrete data itself: no dequantization noise, no added constant.
``data="continuous"`` replaces it by the Gaussian decoder N(x; z_0 / alpha_0, e^{-lam_max})
(a density bound, for checks on continuous data). ``grid`` places the 256 values: "edm"
(u8 / 127.5 - 1, how diffobj trains) or "vdm" (2 (u8 + 0.5) / 256 - 1, VDM's, for numbers
comparable bit for bit with VDM's).

Masked (MD4, Shi et al. 2024), tokens 0..255, keep probability alpha_t:

    -log P(x) <= ∫ (-alpha'/(1 - alpha)) E[Σ_masked -log p(x_n | z_t)] dt     diffusion
               + E[Σ_masked at t0 -log p(x_n | z_t0)]                        reconstruction
               + D alpha_1 log 256                                           prior

with the prior p(z_1): each token masked with probability 1 - alpha_1, else uniform (the range
stops at alpha_1 = sigmoid(lam_min) > 0, so a few tokens are still visible there).

Time integrals draw K evenly spaced u per image with one random offset (low-discrepancy), so
per-image estimates are unbiased and independent; the standard error is over images. u maps to
a noise level by ``time_sampling``: "schedule" (t uniform on the run's time range, the default),
"log_snr" (lam uniform on the range) or, masked only, "alpha" (keep probability uniform). The
bound depends on the range only, not on the schedule (VDM, MD4), so all three estimate the same
number with different variance: the integrand is divided by the density of the level drawn. Denoisers are callables, so the bounds are
testable without a trained model: ``eps_fn(z, level) -> eps_hat`` (Gaussian) and
``logits_fn(z_tokens, level) -> logits (B, 256, ...)`` (masked).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from diffobj import processes
from diffobj.errors import UserError
from diffobj.objectives.schedules import Level, Schedule
from diffobj.processes import gaussian, masked

EpsFn = Callable[[torch.Tensor, Level], torch.Tensor]
LogitsFn = Callable[[torch.Tensor, Level], torch.Tensor]

LEVELS = 256
DECODER_CHUNK = 1 << 24  # elements of one (rows, D, 256) decoder tile
GAUSSIAN_CONVENTION = (
    "discrete data, no dequantization: x = u8/127.5 - 1 on the 256-value grid; VDM's factorised "
    "discrete decoder p(x_d = v_k | z_0) = softmax_k log N(z_0/alpha_0; v_k, exp(-lam_max)); "
    "bits/dim = -log2 P(x) / D"
)
# the 256 data values v_k = (k + offset) * step - 1 of each grid
GRIDS = {"edm": (0.0, 2 / 255), "vdm": (0.5, 2 / 256)}
VDM_CONVENTION = GAUSSIAN_CONVENTION.replace("u8/127.5 - 1", "2(u8 + 0.5)/256 - 1 (VDM's)")
CONTINUOUS_CONVENTION = (
    "continuous data: Gaussian decoder N(x; z_0/alpha_0, exp(-lam_max)); a density bound"
)
MASKED_CONVENTION = (
    "discrete tokens 0..255 (each channel value one token); prior: masked with probability "
    "1 - alpha_1, else uniform over 256; bits/dim = -log2 P(x) / D"
)


@dataclass
class Bound:
    """Per-image terms of a bound, in nats (each a float64 tensor of shape (N,))."""

    process: str
    prior: torch.Tensor
    reconstruction: torch.Tensor
    diffusion: torch.Tensor
    dims: int
    convention: str
    log_snr_range: tuple[float, float]
    samples_per_image: int
    time_sampling: str

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.reconstruction + self.diffusion

    def bits_per_dim(self) -> tuple[float, float]:
        """Mean over images and its standard error, in bits per dimension."""
        bpd = self.total / (self.dims * math.log(2))
        stderr = (
            bpd.std(unbiased=True) / math.sqrt(len(bpd))
            if len(bpd) > 1
            else torch.tensor(float("nan"))
        )
        return float(bpd.mean()), float(stderr)

    def summary(self) -> dict[str, Any]:
        bpd, stderr = self.bits_per_dim()
        scale = self.dims * math.log(2)
        return {
            "process": self.process,
            "bpd": bpd,
            "stderr": stderr,
            # per image, for intervals that resample images (and seeds) in the tables
            "per_image_bpd": (self.total / scale).tolist(),
            "terms_bpd": {
                name: float(getattr(self, name).mean() / scale)
                for name in ("prior", "reconstruction", "diffusion")
            },
            "n_images": len(self.total),
            "dims": self.dims,
            "samples_per_image": self.samples_per_image,
            "log_snr_range": list(self.log_snr_range),
            "time_sampling": self.time_sampling,
            "convention": self.convention,
        }


# -- shared pieces ------------------------------------------------------------------------------


def finite_log_snr_range(schedule: Schedule) -> tuple[float, float]:
    lam_min, lam_max = schedule.log_snr_endpoints()
    if not (math.isfinite(lam_min) and math.isfinite(lam_max)):
        raise UserError(
            f"schedule {schedule.name}: the likelihood bound needs a finite log-SNR range, "
            f"got [{lam_min}, {lam_max}] (set the process's log_snr_range)"
        )
    return lam_min, lam_max


TIME_SAMPLINGS = ("schedule", "log_snr", "alpha")
# the process kinds 'alpha' serves: MD4's draw of the keep probability. A Gaussian alpha draw
# is valid but puts almost no levels near alpha = 1, where its weight 1/(dalpha/dlam) is
# largest (measured on test_nll's Gaussian data, lam in ±12, 4096 levels per image: a
# stderr of 0.55 nats on a gap of 3e-5)
ALPHA_SAMPLING = ("masked",)


def sample_levels(
    schedule: Schedule,
    images: int,
    per_image: int,
    sampling: str,
    generator: torch.Generator | None,
) -> tuple[Level, torch.Tensor]:
    """Levels for ``images * per_image`` rows (K evenly spaced u per image, random offset) and
    each row's Jacobian dt/du, so that ∫ f(t) dt = E_u[jacobian * f(t(u))]."""
    offset = torch.rand(images, 1, generator=generator, dtype=torch.float64)
    u = ((offset + torch.arange(per_image, dtype=torch.float64) / per_image) % 1.0).reshape(-1)
    if sampling == "schedule":
        t, jacobian = schedule.time_from_uniform(u)
        return schedule.level(t), torch.full_like(t, jacobian)
    lam_min, lam_max = finite_log_snr_range(schedule)
    if sampling == "log_snr":
        level = schedule.level(schedule.t_of_log_snr(lam_max - u * (lam_max - lam_min)))
        return level, (lam_max - lam_min) / -level.dlog_snr_dt
    if sampling == "alpha" and schedule.process in ALPHA_SAMPLING:
        # alpha is monotone in lam, so alpha uniform on [alpha_1, alpha_0] is a lam draw
        process = processes.get(schedule.process)
        ends = torch.tensor([lam_min, lam_max], dtype=torch.float64)
        a1, a0 = process.alpha_of_log_snr(ends).tolist()
        a = a1 + u * (a0 - a1)
        level = schedule.level(schedule.t_of_log_snr(process.log_snr_of_alpha(a)))
        return level, (a0 - a1) / -level.dalpha_dt
    only = " / ".join(ALPHA_SAMPLING)
    raise UserError(
        f"--time-sampling must be one of {TIME_SAMPLINGS} ('alpha' for {only} only), got {sampling!r}"
    )


def _chunks(n: int, rows_per_chunk: int, progress: str | None = None):
    starts = range(0, n, max(1, rows_per_chunk))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    for start in starts:
        yield slice(start, min(n, start + rows_per_chunk))


def _per_image_mean(values: torch.Tensor, per_image: int) -> torch.Tensor:
    return values.reshape(-1, per_image).mean(1)


# -- Gaussian -----------------------------------------------------------------------------------


def gaussian_prior_kl(x: torch.Tensor, lam_min: float) -> torch.Tensor:
    """KL(N(alpha x, sigma^2) || N(0, 1)) summed over dimensions, variance-preserving at lam_min."""
    lam = torch.tensor(lam_min, dtype=torch.float64)
    alpha2, sigma2 = torch.sigmoid(lam), torch.sigmoid(-lam)
    x2 = x.to(torch.float64).flatten(1).square()
    return 0.5 * (sigma2 + alpha2 * x2 - 1 - F.logsigmoid(-lam)).sum(1)


def grid_values(grid: str = "edm", device: torch.device | str = "cpu") -> torch.Tensor:
    """The 256 data values of a grid (``GRIDS``), float64."""
    offset, step = GRIDS[grid]
    return (torch.arange(LEVELS, dtype=torch.float64, device=device) + offset) * step - 1


def discrete_reconstruction(
    x: torch.Tensor,
    lam_max: float,
    per_image: int,
    generator: torch.Generator | None,
    grid: str = "edm",
) -> torch.Tensor:
    """-log p(x | z_0) with VDM's discrete decoder, averaged over ``per_image`` draws of z_0."""
    offset, step = GRIDS[grid]
    values = grid_values(grid, x.device)
    flat = x.to(torch.float64).flatten(1)
    index = torch.round((flat + 1) / step - offset).long()
    if (
        (index < 0).any()
        or (index >= LEVELS).any()
        or not torch.allclose(values[index.clamp(0, LEVELS - 1)], flat, atol=1e-4)
    ):
        where = "u8/127.5 - 1" if grid == "edm" else "2(u8 + 0.5)/256 - 1"
        raise UserError(f"the discrete bound needs data on the grid {where}")
    rows = flat.repeat_interleave(per_image, 0)
    index = index.repeat_interleave(per_image, 0)
    noise = torch.randn(rows.shape, generator=generator, dtype=torch.float64).to(x.device)
    x_hat = rows + math.exp(-lam_max / 2) * noise  # z_0 / alpha_0
    nll = torch.empty(len(rows), dtype=torch.float64, device=x.device)
    for part in _chunks(len(rows), DECODER_CHUNK // (rows.shape[1] * LEVELS)):
        logits = -0.5 * math.exp(lam_max) * (x_hat[part, :, None] - values).square()
        log_p = torch.log_softmax(logits, -1).gather(-1, index[part, :, None])[..., 0]
        nll[part] = -log_p.sum(1)
    return _per_image_mean(nll, per_image)


def continuous_reconstruction(x: torch.Tensor, lam_max: float) -> torch.Tensor:
    """E[-log N(x; z_0/alpha_0, e^{-lam_max})] = D/2 (log 2 pi + 1 - lam_max), exactly."""
    dims = x[0].numel()
    value = 0.5 * dims * (math.log(2 * math.pi) + 1 - lam_max)
    return torch.full((len(x),), value, dtype=torch.float64, device=x.device)


@torch.no_grad()
def gaussian_diffusion_term(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: Schedule,
    per_image: int,
    generator: torch.Generator | None,
    sampling: str = "schedule",
) -> torch.Tensor:
    """1/2 ∫ E||eps - eps_hat||^2 dlam per image = 1/2 ∫ (-dlam/dt) E||.||^2 dt."""
    level, jacobian = sample_levels(schedule, len(x), per_image, sampling, generator)
    level, jacobian = level.to(x.device), jacobian.to(x.device)
    rows = x.repeat_interleave(per_image, 0)
    eps = torch.randn(rows.shape, generator=generator, dtype=rows.dtype).to(x.device)
    z = gaussian.corrupt(rows, level, eps)
    err = (eps - eps_fn(z, level).to(eps.dtype)).to(torch.float64).flatten(1).square().sum(1)
    term = 0.5 * jacobian * gaussian.PROCESS.elbo_time_weight(level) * err
    return _per_image_mean(term, per_image)


def gaussian_bound(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: Schedule,
    *,
    samples_per_image: int = 1,
    batch_size: int = 64,
    data: str = "discrete",
    grid: str = "edm",
    time_sampling: str = "schedule",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Bound:
    """The VDM bound of every image in x (N, ...) in [-1, 1]; ``batch_size`` rows per model call,
    each chunk moved to ``device`` (default: x's)."""
    if data not in ("discrete", "continuous"):
        raise ValueError(f"data must be 'discrete' or 'continuous', got {data!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {list(GRIDS)}, got {grid!r}")
    _check_counts(len(x), samples_per_image, batch_size)
    lam_min, lam_max = finite_log_snr_range(schedule)
    images_per_call = max(1, batch_size // samples_per_image)
    terms = {"prior": [], "reconstruction": [], "diffusion": []}
    for part in _chunks(len(x), images_per_call, "gaussian bound" if progress else None):
        chunk = x[part].to(device or x.device)
        terms["prior"].append(gaussian_prior_kl(chunk, lam_min))
        terms["reconstruction"].append(
            discrete_reconstruction(chunk, lam_max, samples_per_image, generator, grid)
            if data == "discrete"
            else continuous_reconstruction(chunk, lam_max)
        )
        terms["diffusion"].append(
            gaussian_diffusion_term(
                eps_fn, chunk, schedule, samples_per_image, generator, time_sampling
            )
        )
    convention = {"edm": GAUSSIAN_CONVENTION, "vdm": VDM_CONVENTION}[grid]
    convention = convention if data == "discrete" else CONTINUOUS_CONVENTION
    return Bound(
        "gaussian",
        *(torch.cat(v).cpu() for v in terms.values()),
        x[0].numel(),
        convention,
        (lam_min, lam_max),
        samples_per_image,
        time_sampling,
    )


# -- masked -------------------------------------------------------------------------------------


def _masked_ce_sum(
    logits_fn: LogitsFn, tokens: torch.Tensor, level: Level, generator: torch.Generator | None
) -> torch.Tensor:
    """Σ over masked tokens of -log p(x_n | z) for one draw of z at ``level`` (per row)."""
    z = masked.corrupt(tokens, level, generator=_generator_for(tokens, generator))
    return (
        masked.masked_cross_entropy(logits_fn(z, level), tokens, z).to(torch.float64)
        * tokens[0].numel()
    )


def _generator_for(
    tokens: torch.Tensor, generator: torch.Generator | None
) -> torch.Generator | None:
    # masked.corrupt draws on the tokens' device; a CPU generator cannot serve a GPU tensor
    if generator is None or generator.device.type == tokens.device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return torch.Generator(tokens.device).manual_seed(seed)


@torch.no_grad()
def masked_bound(
    logits_fn: LogitsFn,
    tokens: torch.Tensor,
    schedule: Schedule,
    *,
    samples_per_image: int = 1,
    batch_size: int = 64,
    time_sampling: str = "schedule",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Bound:
    """The MD4 ELBO of every image in tokens (N, ...) int64 in 0..255 (chunks moved to ``device``)."""
    _check_counts(len(tokens), samples_per_image, batch_size)
    lam_min, lam_max = finite_log_snr_range(schedule)
    t0, t1 = schedule.t_range
    dims = tokens[0].numel()
    alpha_1 = float(schedule.alpha(torch.tensor(t1, dtype=torch.float64)))
    images_per_call = max(1, batch_size // samples_per_image)
    recon, diffusion = [], []
    device = device or tokens.device
    for part in _chunks(len(tokens), images_per_call, "masked bound" if progress else None):
        rows = tokens[part].to(device).repeat_interleave(samples_per_image, 0)
        level, jacobian = sample_levels(
            schedule, part.stop - part.start, samples_per_image, time_sampling, generator
        )
        level = level.to(device)
        weight = jacobian.to(device) * masked.PROCESS.elbo_time_weight(level)
        diffusion.append(
            _per_image_mean(
                weight * _masked_ce_sum(logits_fn, rows, level, generator), samples_per_image
            )
        )
        level_0 = schedule.level(torch.full((len(rows),), t0, dtype=torch.float64)).to(device)
        recon.append(
            _per_image_mean(_masked_ce_sum(logits_fn, rows, level_0, generator), samples_per_image)
        )
    diffusion_t, recon_t = torch.cat(diffusion).cpu(), torch.cat(recon).cpu()
    prior = torch.full_like(diffusion_t, dims * alpha_1 * math.log(LEVELS))
    return Bound(
        "masked",
        prior,
        recon_t,
        diffusion_t,
        dims,
        MASKED_CONVENTION,
        (lam_min, lam_max),
        samples_per_image,
        time_sampling,
    )


def _check_counts(n: int, samples_per_image: int, batch_size: int) -> None:
    if n < 1:
        raise UserError("no images to evaluate")
    if samples_per_image < 1:
        raise UserError(f"--samples-per-image must be >= 1, got {samples_per_image}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


# the bound of each process (diffobj.processes): gaussian_bound also takes ``grid``
BOUNDS: dict[str, Callable[..., Bound]] = {"gaussian": gaussian_bound, "masked": masked_bound}
