"""The cascade of improved bounds of Shi & Titsias (2511.19664; docs/science.md §2.4), measured.

Bounds are on the negative log-likelihood of the training set's empirical distribution, in
nats per data dimension. On a grid of cuts lam_0 = lam_max > lam_1 > .. > lam_T = lam_min
(t(0) = least noise), the bound L^(i) runs the model's reverse process from pure noise down
to the cut and then decodes with the optimal decoder q(x | z_{t(i)}) over the training set:

    L^(i)(x) = prior + M(lam_i) + E_z[-log q(x | z_{lam_i})] / D,
    M(lam)   = ∫_{lam_min}^{lam} g(l) e(l) dl,

where e(l) is the model's unweighted error at log-SNR l (Gaussian eps-MSE per dimension, masked
cross-entropy over masked tokens per dimension, as everywhere in diffobj) and g = 1/2
(Gaussian) or sigmoid(l) (masked): M is the ELBO's diffusion term above the cut. L^(0) is the
ELBO (its decoder at lam_max is nearly a point mass); L^(T) is the prior plus the decoder at
lam_min (about log N / D, the entropy of the empirical distribution). Averaged over the
training set, L^(i) - L^(i+1) = ∫_{lam_{i+1}}^{lam_i} g (e - e*) >= 0, e* the optimal error
(I-MMSE for the Gaussian, exactness of the masked ELBO for the exact denoiser), so the bounds
tighten with i, and an optimal model has every L^(i) equal (tests check both).

Prior: Gaussian KL(N(alpha x, sigma^2) || N(0, 1)) per dimension at lam_min; masked
alpha(t1) log 256 per dimension (prior: each token kept uniformly at random with the forward
keep probability, else masked). It is the same constant in every L^(i).

Cumulative weights: with w̄_j the mean of w(lam) over the interval j = [lam_{j+1}, lam_j]
between two cuts, the cut weights are w_0 = w̄_0, w_i = w̄_i - w̄_{i-1} (i < T), w_T = 0, so
Σ_{i<=j} w_i = w̄_j, and (Abel summation: interval j's KL is in every L^(i) with i <= j)

    Σ_i w_i L^(i) - Σ_i w_i (prior + decoder_i)  =  Σ_i w_i M(lam_i)  =  Σ_j w̄_j ∫_j g e
        -> ∫ w(lam) g(lam) e(lam) dlam  (the reweighted loss)  as the cuts refine,

at second order in the cut spacing (exact when g e is constant on each interval). All w_i >= 0
exactly when the w̄_j do not decrease towards noise, i.e. for w non-increasing in lam
(monotone): then the reweighted loss is a positive combination of bounds tighter than the ELBO,
plus a constant. Non-monotone w (IDDPM, EDM) get negative cut weights.

Exact vs estimated: the decoder term uses the exact posterior over the whole training set
(softmax over all N points; masked: the exact consistent set), averaged over Monte Carlo
queries; M uses Monte Carlo estimates of e at ``levels`` log-SNRs (one noise draw per training
image used) integrated by the trapezoid rule. Standard errors are those of the Monte Carlo
means (levels are independent); the trapezoid's bias is not in them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffobj import processes
from diffobj.errors import UserError
from diffobj.objectives.densities import evaluate_error, level_at
from diffobj.objectives.schedules import DTYPE, Level, Schedule
from diffobj.optimal.queries import balanced_sources, mean_and_stderr
from diffobj.seeds import xor_pair_seed

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]
COLUMNS = (
    "i",
    "t",
    "log_snr",
    "bound",
    "bound_stderr",
    "model_term",
    "model_stderr",
    "decoder_term",
    "decoder_stderr",
    "prior",
    "cut_weight",
    "weighted_bound_sum",
    "constant",
    "reweighted_loss",
    "monotone",
)


def trapezoid_pieces(log_snr: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """∫ values over each step between neighbouring nodes (decreasing lam), trapezoid rule."""
    return (values[1:] + values[:-1]) / 2 * (log_snr[:-1] - log_snr[1:])


def upper_integral(log_snr: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """∫_{lam_min}^{lam_k} values dlam at every node (trapezoid); nodes in decreasing lam."""
    pieces = trapezoid_pieces(log_snr, values)
    tail = torch.flip(torch.cumsum(torch.flip(pieces, [0]), 0), [0])
    return torch.cat([tail, torch.zeros(1, dtype=tail.dtype)])


def trapezoid_weights(log_snr: torch.Tensor) -> torch.Tensor:
    """c_k with ∫_{lam_min}^{lam_0} f ≈ Σ c_k f_k: the standard errors of M use them."""
    gaps = log_snr[:-1] - log_snr[1:]
    c = torch.zeros_like(log_snr)
    c[:-1] += gaps / 2
    c[1:] += gaps / 2
    return c


def interval_means(log_snr: torch.Tensor, values: torch.Tensor, per_cut: int) -> torch.Tensor:
    """The mean of ``values`` (trapezoid) over each interval [lam_{i+1}, lam_i] between cuts,
    from the fine nodes (``per_cut`` fine steps per interval, decreasing lam)."""
    pieces = trapezoid_pieces(log_snr, values).view(-1, per_cut).sum(1)
    widths = (log_snr[:-1] - log_snr[1:]).view(-1, per_cut).sum(1)
    return pieces / widths


def cumulative_weights(w_bar: torch.Tensor) -> torch.Tensor:
    """Cut weights from the interval means w̄_j of w (j = 0: the interval below the ELBO cut):
    w_0 = w̄_0, w_i = w̄_i - w̄_{i-1}, and w_T = 0 (L^(T) has no model term), so that
    Σ_{i<=j} w_i = w̄_j: the weight the cascade puts on the model's KL in interval j."""
    return torch.cat([w_bar[:1], w_bar[1:] - w_bar[:-1], torch.zeros(1, dtype=w_bar.dtype)])


@dataclass
class Cascade:
    """The bounds at the cuts (index i: 0 = least noise, the ELBO end), nats per dimension."""

    t: torch.Tensor
    log_snr: torch.Tensor
    model_term: torch.Tensor
    model_stderr: torch.Tensor
    decoder: torch.Tensor
    decoder_stderr: torch.Tensor
    prior: float

    @property
    def bound(self) -> torch.Tensor:
        return self.prior + self.model_term + self.decoder

    @property
    def bound_stderr(self) -> torch.Tensor:
        return torch.sqrt(self.model_stderr**2 + self.decoder_stderr**2)


def model_terms(
    kind: str, log_snr: torch.Tensor, error: torch.Tensor, stderr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """M(lam_k) and its standard error at every node of a fine grid (decreasing lam).

    M(lam_k) is the trapezoid over nodes k..end: node k enters with weight gap_k / 2, every
    later node with its full trapezoid weight; the levels' Monte Carlo errors are independent.
    """
    g = processes.get(kind).elbo_weight(log_snr)
    m = upper_integral(log_snr, g * error)
    full = (trapezoid_weights(log_snr) * g * stderr) ** 2
    later = torch.flip(torch.cumsum(torch.flip(full, [0]), 0), [0])[1:]  # Σ_{j > k}, k < end
    first = ((log_snr[:-1] - log_snr[1:]) / 2 * g[:-1] * stderr[:-1]) ** 2
    var = torch.cat([first + later, torch.zeros(1, dtype=later.dtype)])
    return m, torch.sqrt(var)


@dataclass
class Identity:
    """Σ w_i L^(i) minus its constant, against the reweighted loss ∫ w g e dlam."""

    cut_weights: torch.Tensor
    weighted_bound_sum: float
    constant: float
    reweighted_loss: float
    monotone: bool


def weighted_identity(
    cascade: Cascade,
    kind: str,
    fine_log_snr: torch.Tensor,
    fine_error: torch.Tensor,
    w_fine: torch.Tensor,
    per_cut: int,
) -> Identity:
    """The cumulative-weight identity on measured curves (see the module docstring): the cut
    weights from w on the fine grid, Σ w_i L^(i), its constant, and ∫ w g e on the fine grid."""
    weights = cumulative_weights(interval_means(fine_log_snr, w_fine.double(), per_cut))
    total = float((weights * cascade.bound).sum())
    constant = float((weights * (cascade.prior + cascade.decoder)).sum())
    g = processes.get(kind).elbo_weight(fine_log_snr)
    reweighted = float(upper_integral(fine_log_snr, w_fine.double() * g * fine_error)[0])
    monotone = bool((weights >= -1e-12 * weights.abs().max()).all())
    return Identity(weights, total, constant, reweighted, monotone)


# -- Monte Carlo pieces -----------------------------------------------------------------------


def cut_grid(schedule: Schedule, cuts: int, per_cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine log-SNR nodes (uniform in lam, decreasing) and the indices of the T + 1 cuts:
    ``per_cut`` fine steps between two cuts."""
    if cuts < 1 or per_cut < 1:
        raise UserError(f"--cuts and --levels-per-cut must be positive, got {cuts}, {per_cut}")
    lam_min, lam_max = schedule.log_snr_endpoints()
    nodes = cuts * per_cut + 1
    fine = torch.linspace(lam_max, lam_min, nodes, dtype=DTYPE)
    return fine, torch.arange(0, nodes, per_cut)


@torch.no_grad()
def error_curve(
    kind: str,
    model_fn: ModelFn,
    schedule: Schedule,
    x: torch.Tensor,
    log_snr: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean unweighted error and its standard error at each log-SNR, over x."""
    means, errs = [], []
    generator = torch.Generator(device=x.device)
    for k, lam in enumerate(log_snr.tolist()):
        values = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            generator.manual_seed(xor_pair_seed(seed, k, start))
            lam_t = torch.full((len(chunk),), lam, dtype=DTYPE, device=x.device)
            level = level_at(schedule, lam_t)
            values.append(evaluate_error(kind, model_fn, chunk, level, generator).double().cpu())
        mean, err = mean_and_stderr(torch.cat(values))
        means.append(mean)
        errs.append(0.0 if math.isnan(err) else err)
    return torch.tensor(means, dtype=DTYPE), torch.tensor(errs, dtype=DTYPE)


def multiplicity(data: torch.Tensor) -> torch.Tensor:
    """How many training items equal each item (the empirical mass of x is m / N)."""
    _, inverse, counts = torch.unique(
        data.flatten(1), dim=0, return_inverse=True, return_counts=True
    )
    return counts[inverse].double()


@torch.no_grad()
def decoder_term(
    kind: str,
    data: torch.Tensor,
    schedule: Schedule,
    log_snr: float,
    queries: int,
    *,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[float, float]:
    """E_x E_z[-log q(x | z_lam)] / D over the training set (N, D), exact posterior, MC queries
    (sources cycle through permutations of the data); mean and standard error."""
    n, dim = data.shape
    gen = torch.Generator(device=data.device).manual_seed(xor_pair_seed(seed, 7))
    sources = balanced_sources(n, queries, torch.Generator().manual_seed(seed)).to(data.device)
    mult = multiplicity(data)
    process = processes.get(kind)
    alpha = float(level_at(schedule, torch.tensor([log_snr], dtype=DTYPE)).alpha[0])
    values = []
    for start in range(0, queries, batch_size):
        src = sources[start : start + batch_size]
        nats = process.decoder_nats(data, src, log_snr, alpha, gen)
        # >= 0 exactly (the m copies of the source are in the sum); clamp float rounding
        values.append((nats - mult[src].log()).clamp_min(0).cpu() / dim)
    return mean_and_stderr(torch.cat(values))


def prior_term(kind: str, data: torch.Tensor, schedule: Schedule) -> float:
    """The prior's KL per dimension at lam_min (see the module docstring)."""
    lam_min, _ = schedule.log_snr_endpoints()
    level = level_at(schedule, torch.tensor([lam_min], dtype=DTYPE))
    return processes.get(kind).prior_kl(data, float(level.alpha[0]), float(level.sigma[0]))


def cascade(
    kind: str,
    model_fn: ModelFn,
    schedule: Schedule,
    data: torch.Tensor,
    *,
    cuts: int = 16,
    per_cut: int = 2,
    images: int = 256,
    queries: int = 1024,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[Cascade, torch.Tensor, torch.Tensor]:
    """The bounds at T + 1 = ``cuts`` + 1 cuts, and the fine (log_snr, error) curve of the model
    (``images`` training items per level, cycling through the data, one noise draw each).

    ``data`` is the training set as the model sees it, (N, C, H, W) (or any (N, ...)): float in
    [-1, 1] (Gaussian) or int64 tokens 0..255 (masked); ``model_fn`` takes batches of it.
    """
    fine, cut_idx = cut_grid(schedule, cuts, per_cut)
    g = torch.Generator().manual_seed(xor_pair_seed(seed, 3))
    pick = balanced_sources(len(data), images, g).sort().values.to(data.device)
    error, stderr = error_curve(
        kind, model_fn, schedule, data[pick], fine, seed=seed, batch_size=batch_size
    )
    m, m_err = model_terms(kind, fine, error, stderr)
    flat = data.flatten(1)
    dec = [decoder_term(kind, flat, schedule, float(fine[k]), queries, seed=seed) for k in cut_idx]
    lam = fine[cut_idx]
    t = schedule.t_of_log_snr(lam)
    result = Cascade(
        t=t,
        log_snr=lam,
        model_term=m[cut_idx],
        model_stderr=m_err[cut_idx],
        decoder=torch.tensor([d[0] for d in dec], dtype=DTYPE),
        decoder_stderr=torch.tensor([0.0 if math.isnan(d[1]) else d[1] for d in dec], dtype=DTYPE),
        prior=prior_term(kind, flat, schedule),
    )
    return result, fine, error


def table_rows(result: Cascade, identity: Identity) -> list[dict]:
    """One row per cut, the identity's run-level numbers repeated (columns ``COLUMNS``)."""
    rows = []
    for i in range(len(result.t)):
        rows.append(
            {
                "i": i,
                "t": float(result.t[i]),
                "log_snr": float(result.log_snr[i]),
                "bound": float(result.bound[i]),
                "bound_stderr": float(result.bound_stderr[i]),
                "model_term": float(result.model_term[i]),
                "model_stderr": float(result.model_stderr[i]),
                "decoder_term": float(result.decoder[i]),
                "decoder_stderr": float(result.decoder_stderr[i]),
                "prior": result.prior,
                "cut_weight": float(identity.cut_weights[i]),
                "weighted_bound_sum": identity.weighted_bound_sum,
                "constant": identity.constant,
                "reweighted_loss": identity.reweighted_loss,
                "monotone": identity.monotone,
            }
        )
    return rows


def bounds_of_run(
    run_dir: str,
    images: np.ndarray,
    *,
    cuts: int = 16,
    per_cut: int = 2,
    n_images: int = 256,
    queries: int = 1024,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 256,
) -> list[dict]:
    """The bound table of a trained run on its training images (uint8 NHWC)."""
    from diffobj.runs import load_run
    from diffobj.training.train_data import model_input

    run = load_run(run_dir, device)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if tuple(tensor.shape[1:]) != tuple(run.image_shape):
        raise UserError(
            f"--data: images of shape {tuple(tensor.shape[1:])} (C, H, W), the run was trained "
            f"on {tuple(run.image_shape)}"
        )
    data = model_input(tensor, run.kind, run.device).contiguous()
    result, fine, error = cascade(
        run.kind,
        run.denoiser,
        run.schedule,
        data,
        cuts=cuts,
        per_cut=per_cut,
        images=n_images,
        queries=queries,
        seed=seed,
        batch_size=batch_size,
    )
    weighting = run.config.weighting
    w_fine = weighting(level_at(run.schedule, fine)).double()
    identity = weighted_identity(result, run.kind, fine, error, w_fine, per_cut)
    return table_rows(result, identity)


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
