"""Samplers: plain functions of a denoiser callable and a schedule (k-diffusion style).

Gaussian (``eps_fn(z, level) -> eps_hat``), on the run's own path z = alpha x + sigma eps:
- ``ddpm``: ancestral sampling in VDM's continuous form; with c = 1 - e^{lam_t - lam_s},
  z_s = (alpha_s / alpha_t)(z_t - sigma_t c eps_hat) + sigma_s sqrt(c) xi.
- ``ddim``: x0_hat = (z_t - sigma_t eps_hat) / alpha_t, sigma~ = sigma_s sqrt(c),
  z_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2 sigma~^2) eps_hat + eta sigma~ xi
  (eta = 0 deterministic; eta = 1 is ``ddpm``).
- ``heun``: EDM's 2nd-order sampler (Algorithm 2, no churn) in the VE view x^ = z / alpha,
  sigma^ = e^{-lam/2}, on EDM's grid (rho = 7, sigma in [0.002, 80]) clipped to the schedule's
  log-SNR range; N steps cost 2N - 1 network evaluations.
DDPM and DDIM step uniformly in the schedule's time from lam_min; their last step lands on the
data (alpha = 1, sigma = 0), i.e. returns x0_hat.

Masked (``logits_fn(z, level) -> logits (B, 256, ...)``):
- ``ancestral``: MD4 / MDLM ancestral unmasking; from t to s each masked token is revealed with
  probability (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from softmax(logits); the
  last step reveals every remaining token (alpha = 1). Steps where nothing is revealed skip the
  network.

``sample_run`` draws images from a trained run: uint8 NHWC (Gaussian: EDM's rounding of
x * 127.5 + 128), in batches, with a progress bar; ``write_samples`` writes samples.npz and a
PNG grid beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffobj.errors import UserError
from diffobj.guidance import check_guidance, class_labels, guided
from diffobj.io import atomic_path
from diffobj.processes.masked import MASK
from diffobj.schedules import DTYPE, Level, Schedule

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]
Progress = Callable[[], None] | None

GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "heun")
MASKED_SAMPLERS = ("ancestral",)
SAMPLERS = {"gaussian": GAUSSIAN_SAMPLERS, "masked": MASKED_SAMPLERS}
EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO = 0.002, 80.0, 7.0


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


def edm_sigmas(schedule: Schedule, steps: int) -> torch.Tensor:
    """EDM's sigma^ grid (rho = 7), clipped to the schedule's log-SNR range, then 0."""
    lam_min, lam_max = schedule.log_snr_endpoints()
    s_max = min(EDM_SIGMA_MAX, math.exp(-lam_min / 2))
    s_min = max(EDM_SIGMA_MIN, math.exp(-lam_max / 2))
    i = torch.arange(steps, dtype=DTYPE)
    frac = i / max(steps - 1, 1)
    sig = (
        s_max ** (1 / EDM_RHO) + frac * (s_min ** (1 / EDM_RHO) - s_max ** (1 / EDM_RHO))
    ) ** EDM_RHO
    return torch.cat([sig, torch.zeros(1, dtype=DTYPE)])


# -- Gaussian samplers ----------------------------------------------------------------------------------


def _prior(
    shape: tuple[int, ...], std: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=device) * std
    return (
        z.contiguous(memory_format=torch.channels_last)
        if device.type == "cuda" and z.dim() == 4
        else z
    )


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


def heun(
    eps_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> torch.Tensor:
    """EDM's deterministic Heun sampler in the VE view; D(x^) = x^ - sigma^ eps_hat."""
    device = torch.device(device)
    sigmas = edm_sigmas(schedule, steps)
    # the run's level at each sigma^ (t by bisection), computed once for the whole grid
    levels = schedule.level(schedule.t_of_log_snr(-2 * torch.log(sigmas[:-1])))

    def d(x_hat: torch.Tensor, i: int) -> torch.Tensor:
        """dx^/dsigma^ = (x^ - D) / sigma^ = eps_hat at grid point i."""
        alpha = float(levels.alpha[i])
        return eps_fn(x_hat * alpha, _batch_level(levels, i, shape[0], device)).float()

    x = _prior(shape, float(sigmas[0]), generator, device)
    for i in range(steps):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        slope = d(x, i)
        x_next = x + (s_next - s_cur) * slope
        if s_next > 0:
            x_next = x + (s_next - s_cur) * (slope + d(x_next, i + 1)) / 2
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


def ancestral(
    logits_fn: ModelFn,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> torch.Tensor:
    """MD4 ancestral unmasking from all-masked tokens; returns int64 tokens in 0..255."""
    device = torch.device(device)
    levels = schedule.level(time_grid(schedule, steps))
    z = torch.full(shape, MASK, dtype=torch.long, device=device)
    for i in range(steps):
        a_t = float(levels.alpha[i])
        a_s = float(levels.alpha[i + 1]) if i + 1 < steps else 1.0
        reveal_prob = (a_s - a_t) / (1 - a_t)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        reveal = (z == MASK) & (u < reveal_prob)
        if bool(reveal.any()):
            logits = logits_fn(z, _batch_level(levels, i, shape[0], device))
            chosen = logits.movedim(1, -1)[reveal]  # (revealed tokens, 256)
            z[reveal] = sample_categorical(chosen, generator)
        if progress:
            progress()
    return z


# -- from a trained run -------------------------------------------------------------------------------------


def to_uint8(samples: torch.Tensor, kind: str) -> np.ndarray:
    """NCHW samples -> uint8 NHWC: Gaussian x in [-1, 1] rounded as EDM, masked tokens as is."""
    if kind == "gaussian":
        samples = (samples.float() * 127.5 + 128).clip(0, 255)
    return samples.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def check_sampler(
    kind: str | None, sampler: str, steps: int, num: int, batch_size: int, eta: float | None
) -> None:
    """UserError for a bad request; ``kind`` None checks everything but the process."""
    known = sorted({s for names in SAMPLERS.values() for s in names})
    if sampler not in known:
        raise UserError(f"--sampler: unknown sampler {sampler!r} (known: {known})")
    if kind is not None and sampler not in SAMPLERS[kind]:
        raise UserError(
            f"--sampler {sampler}: not a sampler of the {kind} process "
            f"(use one of {list(SAMPLERS[kind])})"
        )
    for name, value in (("steps", steps), ("num", num), ("batch-size", batch_size)):
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if eta is not None and sampler != "ddim":
        raise UserError(f"--eta applies to the ddim sampler only, not {sampler}")
    if eta is not None and not 0 <= eta <= 1:
        raise UserError(f"--eta must be in [0, 1], got {eta}")


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
    guidance: float = 0.0,
) -> np.ndarray:
    """``num`` uint8 NHWC images from a trained run. Batch b draws from a generator seeded by
    (seed, b): the output depends on the seed and the batch size, nothing else.

    A class-conditional run draws sample i of class i mod K (``guidance.class_labels``) with
    classifier-free guidance of scale ``guidance`` (0: the conditional model)."""
    from tqdm import tqdm

    from diffobj.train import SAMPLE, load_run, make_model_fn, step_seed

    check_sampler(None, sampler, steps, num, batch_size, eta)
    run = load_run(run_dir, device)
    check_sampler(run.kind, sampler, steps, num, batch_size, eta)
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

    fn = {"ddpm": ddpm, "ddim": ddim, "heun": heun, "ancestral": ancestral}[sampler]
    extra = {"eta": eta or 0.0} if sampler == "ddim" else {}
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
