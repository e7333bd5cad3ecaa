"""Masked (absorbing) diffusion over tokens: each token is kept with probability alpha_t.

L_w(x) = E_t[ w(lam_t) (-alpha'_t / (1 - alpha_t)) Σ_{masked n} -log p(x_n | z_t) ] / D
       = ∫ w(lam) sigmoid(lam) E[CE_masked | lam] dlam / D

with lam = log(alpha / (1 - alpha)): Gaussian weightings transfer by matching w in log-SNR.
Images: each channel value of each pixel is a token in 0..255; the mask token is 256.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffobj.objectives.schedules import DTYPE, Level, Schedule
from diffobj.objectives.weightings import Weighting
from diffobj.processes import LossAxes, sigmoid
from diffobj.processes.gaussian import LossTerms, sample_levels
from diffobj.seeds import Draws, draw

VOCAB = 256  # token values 0..255; the models, optimal.py and bounds.py import it from here
MASK = VOCAB

LogitsFn = Callable[[torch.Tensor, Level], torch.Tensor]  # (B, ...) tokens -> (B, VOCAB, ...)


def corrupt(x: torch.Tensor, level: Level, generator: Draws = None) -> torch.Tensor:
    """Replace each token by MASK with probability 1 - alpha (per sample level)."""
    keep_prob = level.expand(x.dim()).alpha
    u = draw(torch.rand, x.shape, generator, dtype=torch.float64, device=x.device)
    return torch.where(u < keep_prob, x, torch.full_like(x, MASK))


def masked_cross_entropy(logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Σ over masked tokens of -log p(x | z), per data dimension: (B,) nats / D."""
    # classes last, one row per token: the fast (N, V) kernel; a view when the network made
    # its logits class-last (the MLP), a copy otherwise. Only masked tokens enter the sum, so
    # only their rows go through the softmax: about half the rows on average over t.
    vocab = logits.shape[1]
    rows = logits.float().movedim(1, -1).reshape(-1, vocab)
    masked = (z == MASK).reshape(-1)
    ce = F.cross_entropy(rows[masked], x.reshape(-1)[masked], reduction="none")
    per_token = rows.new_zeros(masked.shape).masked_scatter(masked, ce)
    return per_token.view(x.shape[0], -1).sum(1) / x[0].numel()


def weighted_loss(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    schedule: Schedule,
    weighting: Weighting,
    generator: Draws = None,
) -> LossTerms:
    """The per-sample reweighted masked loss, per data dimension, for tokens x (B, ...) int64."""
    level, jacobian = sample_levels(schedule, x.shape[0], generator, x.device)
    error = unweighted_error(logits_fn, x, level, generator)
    factor = jacobian * weighting.total_weight(level, "masked")
    return LossTerms(factor.to(error.dtype) * error, level.log_snr, error.detach())


# -- the process, as the rest of the library sees it (diffobj.processes.Process) ----------------


def unweighted_error(
    logits_fn: LogitsFn, x: torch.Tensor, level: Level, generator: Draws = None
) -> torch.Tensor:
    """Per-sample masked cross-entropy (nats) per dimension at given levels."""
    z = corrupt(x, level, generator)
    return masked_cross_entropy(logits_fn(z, level), x, z)


def decoder_nats(data: torch.Tensor, src: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """-log q(x_src | z) + log m_src = log |C(z)|, C the items agreeing with z on its kept
    tokens (the posterior is uniform over C); exact integer consistency test."""
    from diffobj.optimal.masked_posterior import (
        _consistent_counts,  # optimal builds on this module (VOCAB)
    )

    sizes, _ = _consistent_counts(data, data[src], keep, None, None)
    return sizes.log()


CE_LABEL = "optimal CE (nats / dim)"
CE_TITLE = "Masked: optimal cross-entropy"
LOSS_AXES = LossAxes(  # one scale: the cross-entropy rises with noise as it is
    log_snr_label="log-SNR λ = log(α/(1−α))",
    error_label=CE_LABEL,
    error_title=CE_TITLE,
    noise_symbol="α",
    noise_label="keep probability α",
    noise_column="alpha",
    noise_of_log_snr=lambda lam: 1 / (1 + math.exp(-lam)),
    rising_column="optimal_loss",
    rising_label=CE_LABEL,
    rising_title=CE_TITLE,
    rising_decades=None,
)


class MaskedProcess:
    name = "masked"
    continuous = False
    error_unit = "CE, nats per dim"
    elbo_label = "∫ sigmoid(λ)·CE dλ"
    loss_axes = LOSS_AXES
    input_dtype = torch.long
    vocab = VOCAB

    def model_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        return images_u8.long()  # each channel value of each pixel is a token

    def to_uint8(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.to(torch.uint8)

    # alpha, the keep probability, is sigmoid(lam); "sigma" is the mask probability 1 - alpha
    def alpha_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(log_snr)

    def sigma_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return 1 - torch.sigmoid(log_snr)

    def log_snr_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.log(alpha) - torch.log1p(-alpha)

    def sigma_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        return 1 - alpha

    def dalpha_dlog_snr(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha * (1 - alpha)

    def elbo_weight(self, log_snr):
        return sigmoid(log_snr)

    def elbo_time_weight(self, level: Level) -> torch.Tensor:
        return -level.dalpha_dt / (1 - level.alpha)

    def error(self, model_fn, x, level, generator):
        return unweighted_error(model_fn, x, level, generator)

    def weighted_loss(self, model_fn, x, schedule, weighting, generator):
        return weighted_loss(model_fn, x, schedule, weighting, generator)

    def optimal_data(self, images: np.ndarray) -> torch.Tensor:
        from diffobj.optimal.inputs import (
            images_to_tokens,  # the optimal package builds on this module (VOCAB)
        )

        return images_to_tokens(images)

    def optimal_loss(
        self, data, lam, alpha, sigma, queries, *, seed, batch_size, progress, desc, **exact
    ) -> dict[str, float]:
        """The consistent set's cross-entropy (``masked_query_losses``): the exact posterior,
        the one estimator registered for masked (diffobj.optimal.table checks the choice), so the
        estimator options (``exact``) change nothing."""
        from diffobj.optimal.masked_posterior import masked_query_losses
        from diffobj.optimal.queries import mean_and_stderr

        nats = masked_query_losses(
            data, alpha, queries, seed=seed, batch_size=batch_size, progress=progress, desc=desc
        )
        mean, err = mean_and_stderr(nats)
        return {
            "optimal_loss": mean,
            "stderr": err,
            "sigma_ve": math.nan,
            "optimal_loss_x0": math.nan,
            "stderr_x0": math.nan,
        }

    def decoder_nats(self, data, src, log_snr, alpha, generator) -> torch.Tensor:
        shape = (len(src), data.shape[1])
        u = torch.rand(shape, generator=generator, dtype=DTYPE, device=data.device)
        return decoder_nats(data, src, u < alpha)

    def prior_kl(self, data: torch.Tensor, alpha: float, sigma: float) -> float:
        # q keeps x w.p. alpha; the prior keeps a uniform token w.p. alpha: alpha log(V) apart
        return alpha * math.log(VOCAB)

    def normalise_output(self, out: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(out, dim=1)  # logits are defined up to a per-token constant

    def denoiser(self, net: nn.Module, config: dict) -> Callable[..., torch.Tensor]:
        """logits(z, level, labels) (B, VOCAB, ...) from a raw network; no augmentation."""

        def logits_fn(z, level, labels=None, augment_labels=None):
            return net(z, level.log_snr.float(), labels)

        return logits_fn


PROCESS = MaskedProcess()
