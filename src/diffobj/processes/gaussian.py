"""Gaussian diffusion: z = alpha x + sigma eps; the reweighted loss in the eps-MSE scale.

L_w(x) = 1/2 E_t[ w(lam_t) (-dlam/dt) ||eps - eps_hat(z_t; lam_t)||^2 ] / D
       = 1/2 ∫ w(lam) E||eps - eps_hat||^2 dlam / D   (Kingma & Gao)

t is drawn uniformly on the schedule's time range (stratified), so a schedule acts as the
importance distribution of lam; with w = 1 the loss is the diffusion term of the ELBO.
Networks predict eps, x0, v (= alpha eps - sigma x) or EDM's preconditioned F; every
prediction is converted to eps_hat, so losses and samplers see one parameterisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diffobj.objectives.schedules import DTYPE, Level, Schedule
from diffobj.objectives.weightings import Weighting
from diffobj.processes import LossAxes
from diffobj.seeds import Draws, Shard, batch_size, draw, generator_of

PREDICTIONS = ("eps", "x0", "v", "F")

EpsFn = Callable[[torch.Tensor, Level], torch.Tensor]


@dataclass(frozen=True)
class LossTerms:
    """Per-sample loss (what is optimised), its log-SNR, and the unweighted per-dimension error
    (eps-MSE here, masked CE in nats there), which is what lines up with the optimal loss; the
    gap densities add ``excess`` = error - J*(lam) per sample (diffobj.objectives.densities)."""

    loss: torch.Tensor
    log_snr: torch.Tensor
    error: torch.Tensor
    excess: torch.Tensor | None = None


def corrupt(x: torch.Tensor, level: Level, eps: torch.Tensor) -> torch.Tensor:
    lv = level.expand(x.dim())
    return lv.alpha.to(x.dtype) * x + lv.sigma.to(x.dtype) * eps


def stratified_uniform(
    batch: int, generator: Draws = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Low-discrepancy u in [0, 1): one uniform offset, evenly spaced (VDM's antithetic times).

    ``generator`` (if given) lives on ``device``, like every generator of a batch; a Shard's
    rows are spaced over its global batch.
    """
    offset = torch.rand((), generator=generator_of(generator), dtype=torch.float64, device=device)
    n = batch_size(generator, batch)
    u = (offset + torch.arange(n, dtype=torch.float64, device=device) / n) % 1.0
    return generator.rows(u) if isinstance(generator, Shard) else u


def sample_levels(
    schedule: Schedule,
    batch: int,
    generator: Draws = None,
    device: str | torch.device = "cpu",
) -> tuple[Level, float]:
    """Noise levels for a batch (t ~ U on the schedule's range) and the Jacobian t1 - t0."""
    t, jacobian = schedule.time_from_uniform(stratified_uniform(batch, generator, device))
    return schedule.level(t), jacobian


def weighted_loss(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: Schedule,
    weighting: Weighting,
    generator: Draws = None,
) -> LossTerms:
    """The per-sample reweighted loss, per data dimension, for a batch x (B, ...)."""
    level, jacobian = sample_levels(schedule, x.shape[0], generator, x.device)
    error = unweighted_error(eps_fn, x, level, generator)
    factor = 0.5 * jacobian * weighting.total_weight(level, "gaussian")
    return LossTerms(factor.to(error.dtype) * error, level.log_snr, error.detach())


# -- parameterisations ------------------------------------------------------------------------


def eps_from_prediction(
    out: torch.Tensor, z: torch.Tensor, level: Level, prediction: str, sigma_data: float = 0.5
) -> torch.Tensor:
    """Convert a network output (already through EDM's c_skip/c_out for F) to eps_hat."""
    lv = level.expand(z.dim())
    a, s = lv.alpha.to(z.dtype), lv.sigma.to(z.dtype)
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (z - a * out) / s
    if prediction == "v":
        # z = a x + s e, v = a e - s x  =>  e = (s z + a v) / (a^2 + s^2)
        return (s * z + a * out) / (a * a + s * s)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def x0_from_eps(eps_hat: torch.Tensor, z: torch.Tensor, level: Level) -> torch.Tensor:
    lv = level.expand(z.dim())
    return (z - lv.sigma.to(z.dtype) * eps_hat) / lv.alpha.to(z.dtype)


class Denoiser(nn.Module):
    """Wraps a raw network net(x_in, log_snr) with input scaling and output conversion to eps_hat.

    The input is scaled to unit variance for data of std sigma_data: c_in = 1/sqrt(a^2 sd^2 + s^2).
    For prediction "F" (EDM), the network is preconditioned in the VE view x̂ = z/alpha,
    σ̂ = e^{-lam/2}: D = c_skip x̂ + c_out F, with EDM's c_skip and c_out; D is x0_hat.
    """

    def __init__(self, net: nn.Module, prediction: str = "eps", sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        self.net = net
        self.prediction = prediction
        self.sigma_data = sigma_data

    def forward(
        self,
        z: torch.Tensor,
        level: Level,
        labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lv = level.expand(z.dim())
        a, s = lv.alpha.to(z.dtype), lv.sigma.to(z.dtype)
        sd = self.sigma_data
        c_in = 1 / torch.sqrt(a * a * sd * sd + s * s)
        conditioning = () if labels is None else (labels,)  # class labels of a conditional net
        # EDM's augmentation labels (augment.py); only a network with augment_dim takes them
        augment = {} if augment_labels is None else {"augment_labels": augment_labels}
        out = self.net(z * c_in, level.log_snr.to(z.dtype), *conditioning, **augment).to(z.dtype)
        if self.prediction != "F":
            return eps_from_prediction(out, z, level, self.prediction)
        sigma_hat = s / a
        c_skip = sd * sd / (sigma_hat**2 + sd * sd)
        c_out = sigma_hat * sd / torch.sqrt(sigma_hat**2 + sd * sd)
        x0_hat = c_skip * (z / a) + c_out * out
        return (z - a * x0_hat) / s


# -- the process, as the rest of the library sees it (diffobj.processes.Process) ----------------


def unweighted_error(
    eps_fn: EpsFn, x: torch.Tensor, level: Level, generator: Draws = None
) -> torch.Tensor:
    """Per-sample eps-MSE per dimension at given levels (what the optimal loss bounds)."""
    eps = draw(torch.randn, x.shape, generator, dtype=x.dtype, device=x.device)
    eps_hat = eps_fn(corrupt(x, level, eps), level)
    return (eps - eps_hat.to(eps.dtype)).square().flatten(1).mean(1)


def decoder_nats(
    data: torch.Tensor, src: torch.Tensor, eps: torch.Tensor, log_snr: float, chunk: int = 4096
) -> torch.Tensor:
    """-log π_src(z) for z = alpha x_src + sigma eps, π the posterior over ``data`` (N, D) in
    [-1, 1]; in the VE view x̂ = x_src + s eps, s² = e^-lam: π_n ∝ exp(-||x̂ - x_n||² / 2s²).
    Written as differences to the source, d_n - d_src = ||x_n||² - ||x_src||² - 2 x̂·(x_n - x_src),
    in float64 (the source's own term is exactly 0)."""
    x_src = data[src].double()
    s2 = math.exp(-log_snr)
    x_hat = x_src + math.sqrt(s2) * eps.double()
    src_sq = x_src.square().sum(1, keepdim=True)
    src_dot = (x_hat * x_src).sum(1, keepdim=True)
    parts = []
    for start in range(0, len(data), chunk):
        block = data[start : start + chunk].double()
        diff = block.square().sum(1) - src_sq - 2 * (x_hat @ block.T - src_dot)
        parts.append(torch.logsumexp(-diff / (2 * s2), dim=1))
    return torch.logsumexp(torch.stack(parts, 1), dim=1)


LOSS_AXES = LossAxes(
    log_snr_label="log-SNR λ",
    error_label="optimal loss  E‖ε−ε*‖²/D",
    error_title="Gaussian: optimal loss (ε scale)",
    noise_symbol="σ",
    noise_label="σ = exp(−λ/2)",
    noise_column="sigma_ve",
    noise_of_log_snr=lambda lam: math.exp(-lam / 2),
    rising_column="optimal_loss_x0",
    rising_label="optimal loss  E‖x−E[x|z]‖²/D",
    rising_title="Gaussian: optimal loss (x0 scale)",
    rising_decades=6,  # the x0 loss falls like exp(-1/sigma^2)
)


class GaussianProcess:
    name = "gaussian"
    continuous = True
    error_unit = "eps-MSE per dim"
    elbo_label = "½ ∫ ε-MSE dλ"
    loss_axes = LOSS_AXES
    input_dtype = torch.float32

    def model_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        return images_u8.float() / 127.5 - 1

    def to_uint8(self, samples: torch.Tensor) -> torch.Tensor:
        return (samples.float() * 127.5 + 128).clip(0, 255).to(torch.uint8)  # rounds as EDM

    # the variance-preserving path: alpha^2 = sigmoid(lam), sigma^2 = 1 - alpha^2
    def alpha_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(log_snr).sqrt()

    def sigma_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-log_snr).sqrt()

    def log_snr_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        return 2 * (torch.log(alpha) - torch.log(self.sigma_of_alpha(alpha)))

    def sigma_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        return (1 - alpha**2).clamp_min(0).sqrt()

    def dalpha_dlog_snr(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha * ((1 - alpha**2) / 2)

    def elbo_weight(self, log_snr):
        if isinstance(log_snr, torch.Tensor):
            return torch.full_like(log_snr, 0.5)
        return np.full_like(np.asarray(log_snr, dtype=float), 0.5)

    def elbo_time_weight(self, level: Level) -> torch.Tensor:
        return -level.dlog_snr_dt

    def error(self, model_fn, x, level, generator):
        return unweighted_error(model_fn, x, level, generator)

    def weighted_loss(self, model_fn, x, schedule, weighting, generator):
        return weighted_loss(model_fn, x, schedule, weighting, generator)

    # the optimal package builds on the process modules (masked.VOCAB, processes.KINDS): imported
    # where used
    def optimal_data(self, images: np.ndarray) -> torch.Tensor:
        from diffobj.optimal.inputs import images_to_unit

        return images_to_unit(images)

    def optimal_loss(self, data, lam, alpha, sigma, queries, **options) -> dict[str, float]:
        """The posterior mean's x0 error (``gaussian_query_losses``), scaled by e^lam to eps."""
        from diffobj.optimal.gaussian_posterior import gaussian_query_losses
        from diffobj.optimal.queries import mean_and_stderr, query_groups

        x0 = gaussian_query_losses(data, alpha, sigma, queries, **options)
        groups = query_groups(queries, options["estimator"], options["batch_size"], data.device)
        x0_mean, x0_err = mean_and_stderr(x0, groups)
        return {
            "optimal_loss": x0_mean * math.exp(lam),
            "stderr": x0_err * math.exp(lam),
            "sigma_ve": math.exp(-lam / 2),
            "optimal_loss_x0": x0_mean,
            "stderr_x0": x0_err,
        }

    def decoder_nats(self, data, src, log_snr, alpha, generator) -> torch.Tensor:
        shape = (len(src), data.shape[1])
        eps = torch.randn(shape, generator=generator, dtype=DTYPE, device=data.device)
        return decoder_nats(data, src, eps, log_snr)

    def prior_kl(self, data: torch.Tensor, alpha: float, sigma: float) -> float:
        x2 = float(data.double().square().mean())
        return 0.5 * (alpha**2 * x2 + sigma**2 - 1 - 2 * math.log(sigma))

    def normalise_output(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def denoiser(self, net: nn.Module, config: dict) -> nn.Module:
        """eps_hat(z, level, labels, augment_labels) from a raw network (``Denoiser``)."""
        return Denoiser(net, config.get("prediction", "eps"), config.get("sigma_data", 0.5))


PROCESS = GaussianProcess()
