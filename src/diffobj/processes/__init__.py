"""The noise processes, one module each: ``gaussian`` (continuous) and ``masked`` (absorbing).

A process module defines ``PROCESS``, an object with the members of :class:`Process`; code that
differs by process looks the object up once (``get(kind)``) instead of branching on the kind.
Adding a process is adding a module here that defines ``PROCESS`` (and its schedules, which
map log-SNR to the process's alpha, in diffobj.objectives.schedules).

The modules are imported on first use, so the low layers (schedules, weightings) that the
process modules build on can name this package without an import circle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from diffobj.errors import UserError

KINDS = ("gaussian", "masked")

ModelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LossAxes:
    """How the optimal-loss figure shows a process (diffobj.analysis.figures_optimal draws it): the loss
    against log-SNR in the error's unit, and against the process's own noise coordinate in the
    scale where it rises from ~0 with noise, the critical level marked on both."""

    log_snr_label: str  # lam, as the process defines it
    error_label: str  # the optimal loss in the error's unit (the table's optimal_loss)
    error_title: str
    noise_symbol: str  # of the coordinate: its critical value is labelled "{symbol}*"
    noise_label: str
    noise_column: str  # the optimal-loss table's column holding the coordinate
    noise_of_log_snr: Callable[[float], float]
    rising_column: str  # the table's loss that rises with noise along the coordinate
    rising_label: str
    rising_title: str
    rising_decades: int | None  # a log loss axis this many decades deep; None: linear


class Process(Protocol):
    """What the library needs of a noise process; every per-sample quantity is per data
    dimension, so losses of different data sizes compare."""

    name: str
    continuous: bool  # real-valued data (x in [-1, 1]) rather than integer tokens
    input_dtype: torch.dtype  # what the network takes
    error_unit: str  # of the unweighted error, for axis labels
    elbo_label: str  # the ELBO's diffusion term as an integral of the error, for axis labels
    loss_axes: LossAxes  # how the optimal-loss figure shows the process

    def model_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) as the data x the process corrupts."""

    def to_uint8(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples in the data's representation back to uint8 pixels (inverse of model_input)."""

    def alpha_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """alpha at a log-SNR (the path of every schedule that declares only lam(t))."""

    def sigma_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor: ...

    def log_snr_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """lam at an alpha: the inverse of alpha_of_log_snr (schedules that declare alpha alone)."""

    def sigma_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """sigma of a schedule that declares alpha(t) alone."""

    def dalpha_dlog_snr(self, alpha: torch.Tensor) -> torch.Tensor: ...

    def elbo_weight(self, log_snr: Any) -> Any:
        """g(lam): the ELBO's weight per unit log-SNR on the unweighted error (tensor or array)."""

    def elbo_time_weight(self, level: Any) -> torch.Tensor:
        """The ELBO's factor per unit time on the unweighted error, at a schedule's level."""

    def error(self, model_fn: ModelFn, x: torch.Tensor, level: Any, generator: Any) -> torch.Tensor:
        """Per-sample unweighted error at given levels: the quantity the optimal loss bounds."""

    def weighted_loss(
        self, model_fn: ModelFn, x: torch.Tensor, schedule: Any, weighting: Any, generator: Any
    ) -> Any:
        """The reweighted training loss of a batch (LossTerms), t drawn on the schedule."""

    def optimal_data(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (N, ...) as the (N, D) training set the optimal posterior sums over."""

    def optimal_loss(
        self,
        data: torch.Tensor,
        lam: float,
        alpha: float,
        sigma: float,
        queries: int,
        **options: Any,
    ) -> dict[str, float]:
        """The optimal loss of the training set ``data`` (``optimal_data``) at one level, as the
        optimal-loss table's columns optimal_loss and stderr (the error's unit), sigma_ve,
        optimal_loss_x0 and stderr_x0 (the x0 view; nan without one). ``options``: estimator,
        subset, C, seed, batch_size, progress, desc (diffobj.optimal.table.optimal_loss_table)."""

    def decoder_nats(
        self, data: torch.Tensor, src: torch.Tensor, log_snr: float, alpha: float, generator: Any
    ) -> torch.Tensor:
        """-log q(x_src | z) + log m_src in nats per query, z drawn from each source at the
        level: the exact posterior of the training set ``data`` (N, D) as the decoder."""

    def prior_kl(self, data: torch.Tensor, alpha: float, sigma: float) -> float:
        """KL(q(z | x) || prior) per dimension at the lowest log-SNR, averaged over ``data``."""

    def normalise_output(self, out: torch.Tensor) -> torch.Tensor:
        """The network output in the form guidance combines linearly (logits: log-probs)."""

    def denoiser(self, net: torch.nn.Module, config: dict) -> Callable[..., torch.Tensor]:
        """The model function f(z, level, labels, augment_labels) of a raw network, given the
        spec's process entry (``prediction``, ``sigma_data``)."""


def get(kind: str) -> Process:
    """The process named ``kind`` (UserError naming the known kinds otherwise)."""
    if kind not in KINDS:
        raise UserError(f"unknown process kind {kind!r} (known: {list(KINDS)})")
    return importlib.import_module(f"diffobj.processes.{kind}").PROCESS


def sigmoid(log_snr: Any) -> Any:
    """sigmoid(lam) for a tensor (torch's kernel) or an array/float (numpy)."""
    if isinstance(log_snr, torch.Tensor):
        return torch.sigmoid(log_snr)
    return 1 / (1 + np.exp(-np.asarray(log_snr, dtype=float)))
