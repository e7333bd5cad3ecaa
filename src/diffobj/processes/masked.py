"""Masked (absorbing) diffusion over tokens: each token is kept with probability alpha_t.

L_w(x) = E_t[ w(lam_t) (-alpha'_t / (1 - alpha_t)) Σ_{masked n} -log p(x_n | z_t) ] / D
       = ∫ w(lam) sigmoid(lam) E[CE_masked | lam] dlam / D

with lam = log(alpha / (1 - alpha)): Gaussian weightings transfer by matching w in log-SNR.
Images: each channel value of each pixel is a token in 0..255; the mask token is 256.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffobj.processes import sigmoid
from diffobj.processes.gaussian import LossTerms, sample_levels
from diffobj.schedules import Level, Schedule
from diffobj.seeds import Draws, draw
from diffobj.weightings import Weighting

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


class MaskedProcess:
    name = "masked"
    continuous = False
    error_unit = "CE, nats per dim"
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
