"""The optimal (irreducible) loss of a finite training set, per noise level (docs/science.md §3).

Gaussian, z = alpha x + sigma eps with x in [-1, 1]^D, lam = log(alpha^2 / sigma^2): the optimal
denoiser is the posterior mean E[x|z] = Σ_n π_n(z) x_n, π = softmax_n(-||x̂ - x_n||² / 2s²)
with x̂ = z / alpha and s² = e^-lam. The optimal loss per dimension in the eps scale is
E||eps - eps*||² / D = e^lam E||x - E[x|z]||² / D (x0 scale without the e^lam).

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

Every estimator works in the per-query error form: the error x_src - E[x|z] is accumulated as
Σ_k w_k (x_k - x_src) / Σ_k w_k with the source's own term (exactly zero) left out of the
numerator, so nothing of size 1 is subtracted from something of size 1 (no A - B), and the
accumulators are float64 while the matmuls are float32. The float32 logits are off by up to
~e^lam sqrt(D) 2^-24 ||x̂|| ||x|| (``logit_error_bound``: ~1e3 at lam = 16 on 32x32x3); where
that exceeds ``LOGIT_TOL`` they only select the candidates that could carry weight, whose logits
are then recomputed in float64 from the differences x̂ - x_k (``posterior_sq_error``). Tested
against a float64 brute force on 32x32x3 and 64x64x3 images with near-duplicates up to lam = 24.

Masked (keep probability alpha, tokens 0..255): the posterior is uniform over the consistent set
C = {n : x_n agrees with the query on its kept tokens}; the optimal predictor at a masked
position is the value distribution over C, and the optimal loss is Σ_masked -log μ*(x_d) / D
nats per dimension. Consistency is an exact integer test: Σ_kept (x_kd - x_srcd)² = 0, computed
with one float64 matmul per chunk (every partial sum is an integer below 2^53).

Queries: sources cycle through random permutations of the data (each point used equally often),
so at the extremes (alpha -> 0, sigma -> inf) the estimate is exact up to the posterior.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffobj import processes
from diffobj.devices import resolve_device
from diffobj.errors import UserError
from diffobj.objectives.schedules import DTYPE, Schedule
from diffobj.processes.masked import VOCAB
from diffobj.registry import Registry
from diffobj.seeds import xor_pair_seed

log = logging.getLogger(__name__)

ESTIMATORS: Registry[Estimator] = Registry("estimator")  # registered below (@estimator)
CPU_TILE_BYTES = 256 * 2**20  # working memory of one (queries x data) tile on CPU
GPU_MEMORY_FRACTION = 0.5  # share of free GPU memory a tile may use
DEFAULT_BATCH = {"cpu": 512, "cuda": 4096}
MIN_SUBSETS = 32  # subset estimators: independent subsets per level (batches of the stderr)
LOG_TINY = -87.0  # exp(-87) ~ 1.6e-38, just above float32's subnormals
LOGIT_TOL = 0.05  # float32 logits off by more than this (low noise): contenders in float64
CONTENDER_BYTES = 64 * 2**20  # working memory of one chunk of float64 contender differences
TABLE_COLUMNS = (
    "log_snr",
    "t",
    "optimal_loss",
    "stderr",
    "estimator",
    "n_data",
    "n_queries",
    "process",
    "alpha",
    "sigma",
    "sigma_ve",
    "optimal_loss_x0",
    "stderr_x0",
    "subset",
    "C",
    "seconds",
    "queries_per_s",
    "tflops",
)


# -- data and devices ---------------------------------------------------------------------------


def images_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, ...) images as float32 (N, D) in [-1, 1] (x = u8 / 127.5 - 1), in place: one
    float32 copy at the peak (ImageNet 64: 63 GB, not 126 GB)."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    return flat.to(torch.float32).div_(127.5).sub_(1)


def images_to_tokens(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, ...) images as (N, D) tokens 0..255 (each channel of each pixel one token)."""
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1).copy())


def tile_budget(device: torch.device) -> int:
    """Bytes one tile of work may use: a share of free GPU memory, or a fixed CPU budget."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_FRACTION)
    return CPU_TILE_BYTES


def balanced_sources(n_data: int, n_queries: int, generator: torch.Generator) -> torch.Tensor:
    """Source indices of the queries: random permutations of 0..N-1 laid end to end."""
    rounds = -(-n_queries // n_data)
    perms = [torch.randperm(n_data, generator=generator) for _ in range(rounds)]
    return torch.cat(perms)[:n_queries]


# -- Gaussian: the posterior-mean error of a batch of queries -------------------------------------


def posterior_sq_error(
    queries: torch.Tensor,
    sources: torch.Tensor,
    candidates: torch.Tensor,
    inv_s2: float,
    *,
    exclude: torch.Tensor | None = None,
    self_offset: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """||x_src - E[x|x̂]||² per query (float64), the softmax over ``candidates`` (+ the source).

    queries (B, D): x̂ = z / alpha (VE form), float32. sources (B, D): the point each query was
    drawn from. candidates (L, D): the points of the posterior sum. ``exclude`` (B,): one
    candidate index per query left out (-1: none), used to take the source out of the candidate
    sum. ``self_offset`` (B,): if given, the source joins the sum with log-weight offset
    ``self_offset`` (0: plain, -log C: cDOL, -inf: absent).

    The logits -||x̂ - x_k||² s^-2 / 2 (up to a per-query constant) come from float32 matmuls,
    whose error grows with s^-2 = e^lam (``logit_error_bound``). Where that error is below
    ``LOGIT_TOL`` the float32 weights are used, each block's relative to its own maximum and the
    blocks and the source merged in float64 (a log-sum-exp whose floor never outweighs a block's
    largest term). Above it (low noise), the float32 logits only pick the contenders, the
    candidates that could be within ``-LOG_TINY`` of the largest logit; their logits are then
    recomputed in float64 from the differences x̂ - x_k, and the rest (weights below e^-87 of the
    largest) are left out.
    """
    batch, dim = queries.shape
    softmax = _OnlineSoftmax(batch, dim, queries.device)
    q64, src64 = queries.double(), sources.double()
    half = 0.5 * inv_s2
    bound = logit_error_bound(queries, candidates, inv_s2)
    refine = bool((bound > LOGIT_TOL).any())
    # the float32 logits are s^-2 (<x̂, x_k> - ||x_k||²/2) = constant - ½ s^-2 ||x̂ - x_k||²;
    # float64 ones drop the per-query constant (it cancels in the softmax) when all are float64
    constant = half * q64.square().sum(1)
    frame = torch.zeros_like(constant) if refine else constant
    if self_offset is not None:  # the source's own weight: in the total, not in the numerator
        self_logit = frame - half * (q64 - src64).square().sum(1)
        softmax.merge(self_logit + self_offset, torch.ones_like(constant), None)
    scaled = queries * inv_s2
    rows = torch.arange(batch, device=queries.device)
    chunk_size = chunk_size or len(candidates)
    for start in range(0, len(candidates), chunk_size):
        block = candidates[start : start + chunk_size]
        half_norms = (-0.5 * inv_s2) * block.square().sum(1)
        logits = torch.addmm(half_norms.unsqueeze(0), scaled, block.T)  # (B, Lc) float32
        if exclude is not None:
            local = exclude - start
            hit = (local >= 0) & (local < len(block))
            logits[rows[hit], local[hit]] = -math.inf
        if refine:
            # contenders: within 87 of the largest logit, float32 errors (and the rounding of
            # the threshold, below one ulp < bound) included
            reference = torch.maximum(softmax.run_max + constant, logits.max(1).values.double())
            threshold = (reference + LOG_TINY - 3 * bound).float()
            q, k = (logits >= threshold.unsqueeze(1)).nonzero(as_tuple=True)
            _merge_pairs(softmax, q, k, block, q64, src64, half)
        else:
            _merge_block(softmax, logits, block, src64)
    error = softmax.numerator / softmax.total.unsqueeze(1)
    return error.square().sum(1)


class _OnlineSoftmax:
    """Running max, total weight and weighted error Σ w_k (x_k - x_src) of each query (float64),
    merged part by part: a part is (its log-scale m, its weight sum, its numerator) whose weights
    are relative to e^m."""

    def __init__(self, batch: int, dim: int, device: torch.device):
        self.run_max = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
        self.total = torch.zeros(batch, dtype=torch.float64, device=device)
        self.numerator = torch.zeros(batch, dim, dtype=torch.float64, device=device)

    def merge(self, scale: torch.Tensor, weight: torch.Tensor, numerator: torch.Tensor | None):
        new_max = torch.maximum(self.run_max, scale)
        shift = _finite_or_zero(new_max)
        old, part = torch.exp(self.run_max - shift), torch.exp(scale - shift)
        self.total = self.total * old + weight * part
        self.numerator = self.numerator * old.unsqueeze(1)
        if numerator is not None:
            self.numerator += numerator * part.unsqueeze(1)
        self.run_max = new_max


def _merge_block(
    softmax: _OnlineSoftmax, logits: torch.Tensor, block: torch.Tensor, src64: torch.Tensor
) -> None:
    """float32 weights relative to the block's own largest logit (that one weighs exactly 1; a
    row with none finite merges with scale -inf, i.e. not at all)."""
    block_max = logits.max(1).values
    # floor at float32's smallest normal: exp of huge negatives takes a 10x slower path, and
    # weights of e^-87 relative to the block's largest (1) change nothing measurable
    weights = logits.sub_(_finite_or_zero(block_max).unsqueeze(1)).clamp_min_(LOG_TINY).exp_()
    weight_sum = weights.sum(1, dtype=torch.float64)
    numerator = (weights @ block).double() - weight_sum.unsqueeze(1) * src64
    softmax.merge(block_max.double(), weight_sum, numerator)


def _merge_pairs(
    softmax: _OnlineSoftmax,
    q: torch.Tensor,
    k: torch.Tensor,
    block: torch.Tensor,
    q64: torch.Tensor,
    src64: torch.Tensor,
    half: float,
) -> None:
    """The (query q, candidate k) pairs with float64 logits -½ s^-2 ||x̂ - x_k||², the squared
    distance summed from the differences (no cancellation of large terms)."""
    if not len(q):
        return
    step = max(1, CONTENDER_BYTES // (8 * q64.shape[1]))
    exact = torch.cat(
        [
            -half * (q64[q[p : p + step]] - block[k[p : p + step]].double()).square().sum(1)
            for p in range(0, len(q), step)
        ]
    )
    row_max = torch.full_like(softmax.run_max, -math.inf)
    row_max = row_max.scatter_reduce(0, q, exact, "amax", include_self=True)
    weights = torch.exp(exact - _finite_or_zero(row_max)[q])
    weight_sum = torch.zeros_like(softmax.total).index_add_(0, q, weights)
    numerator = torch.zeros_like(softmax.numerator)
    for p in range(0, len(q), step):
        qq, kk = q[p : p + step], k[p : p + step]
        numerator.index_add_(0, qq, weights[p : p + step, None] * (block[kk].double() - src64[qq]))
    softmax.merge(row_max, weight_sum, numerator)


def logit_error_bound(
    queries: torch.Tensor, candidates: torch.Tensor, inv_s2: float
) -> torch.Tensor:
    """Per query, a bound on the error of its float32 logits s^-2 (<x̂, x_k> - ||x_k||² / 2).

    A float32 dot product of length D is off by at most c(D) u Σ_d |a_d b_d| (u the unit
    roundoff: 2^-24, or 2^-11 under TF32), and Σ_d |a_d b_d| <= ||a|| ||b||. c(D) is taken as
    4 sqrt(D) + 2: rounding errors add like a random walk (the probabilistic bound of Higham &
    Mary 2019 holds with high probability at a few sqrt(D)), +2 for the sum and the final rounding.
    """
    dim = queries.shape[1]
    tf32 = queries.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    unit = 2.0**-11 if tf32 else 2.0**-24
    # norms by reductions: no (N, D) temporary (ImageNet-64's data is 63 GB in float32)
    norm_x = float(torch.linalg.vector_norm(candidates, dim=1).amax()) if len(candidates) else 0.0
    norm_q = torch.linalg.vector_norm(queries, dim=1).double()
    return inv_s2 * (4 * math.sqrt(dim) + 2) * unit * (norm_q * norm_x + 0.5 * norm_x**2)


def _finite_or_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


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


def gaussian_query_losses(
    data: torch.Tensor,
    alpha: float,
    sigma: float,
    n_queries: int,
    *,
    estimator: str = "exact",
    subset: int | None = None,
    C: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """Per-query x0-scale error ||x - E[x|z]||² / D (float64, (M,)) at one noise level.

    ``data`` (N, D) float32 in [-1, 1] on the device that does the work. Queries
    z = alpha x_src + sigma eps depend only on ``seed`` and the batch size (``query_batch``), so
    estimators run with the same seed and batch size are paired query by query; the subsets use
    their own stream.
    """
    n_data, dim = data.shape
    check_estimator(estimator, n_data, subset, C)
    device = data.device
    query_gen = torch.Generator(device=device).manual_seed(xor_pair_seed(seed, 0))
    source_gen = torch.Generator().manual_seed(xor_pair_seed(seed, 1))
    subset_gen = torch.Generator().manual_seed(xor_pair_seed(seed, 2))
    sources = balanced_sources(n_data, n_queries, source_gen).to(device)
    inv_s2 = alpha**2 / sigma**2
    n_candidates = subset if ESTIMATORS[estimator].uses_subset else n_data
    batch = query_batch(n_queries, estimator, batch_size, device)
    chunk = chunk_size or max(1, tile_budget(device) // (8 * batch))
    losses = torch.empty(n_queries, dtype=torch.float64, device=device)
    with tqdm(
        total=n_queries, desc=desc, unit="q", disable=None if progress else True, leave=False
    ) as bar:
        for start in range(0, n_queries, batch):
            src = sources[start : start + batch]
            x_src = data[src]
            eps = torch.randn(x_src.shape, generator=query_gen, device=device)
            queries = (alpha * x_src + sigma * eps) / alpha
            plan = plan_candidates(data, src, estimator, subset, C, subset_gen)
            sq = posterior_sq_error(
                queries,
                x_src,
                plan.candidates,
                inv_s2,
                exclude=plan.exclude,
                self_offset=plan.self_offset,
                chunk_size=min(chunk, n_candidates),
            )
            losses[start : start + len(src)] = sq / dim
            bar.update(len(src))
    return losses


# -- masked: the consistent set ------------------------------------------------------------------


def masked_query_loss(
    tokens: torch.Tensor,
    src: torch.Tensor,
    keep: torch.Tensor,
    *,
    histogram: torch.Tensor | None = None,
    chunk_size: int | None = None,
    pair_chunk: int | None = None,
) -> torch.Tensor:
    """Σ over masked positions of -log μ*(x_src,d | kept tokens), per dimension (float64, (B,)).

    tokens (N, D) uint8; src (B,) source indices; keep (B, D) bool. μ*_d(v) is the share of the
    consistent set (items equal to the source on every kept position) with value v at d.
    Queries that keep nothing use the per-position histogram (the whole data is consistent).
    """
    n_data, dim = tokens.shape
    device = tokens.device
    histogram = position_histogram(tokens) if histogram is None else histogram
    loss = torch.zeros(len(src), dtype=torch.float64, device=device)
    src_tokens = tokens[src]
    masked = ~keep
    none_kept = masked.all(1)
    if none_kept.any():
        counts = histogram.gather(1, src_tokens[none_kept].long().T).T  # (b, D)
        loss[none_kept] = (math.log(n_data) - counts.log()).mean(1)
    some = (~none_kept).nonzero().squeeze(1)
    if len(some):
        sizes, counts = _consistent_counts(
            tokens, src_tokens[some], keep[some], chunk_size, pair_chunk
        )
        nats = (sizes.log().unsqueeze(1) - counts.log()) * masked[some]
        loss[some] = nats.sum(1) / dim
    return loss


def position_histogram(tokens: torch.Tensor) -> torch.Tensor:
    """(D, 256) float64 counts of each token value at each position."""
    n_data, dim = tokens.shape
    offsets = torch.arange(dim, device=tokens.device) * VOCAB
    counts = torch.zeros(dim * VOCAB, dtype=torch.float64, device=tokens.device)
    rows = max(1, tile_budget(tokens.device) // (8 * dim))  # int64 indices of one chunk
    for start in range(0, n_data, rows):
        index = (tokens[start : start + rows].long() + offsets).flatten()
        counts += torch.bincount(index, minlength=dim * VOCAB)
    return counts.view(dim, VOCAB)


def _consistent_counts(
    tokens: torch.Tensor,
    src_tokens: torch.Tensor,
    keep: torch.Tensor,
    chunk_size: int | None,
    pair_chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """|C| per query (B,) and, per position, how many of C share the source's value (B, D)."""
    batch, dim = src_tokens.shape
    device = tokens.device
    keep64 = keep.double()
    src64 = src_tokens.double()
    # Σ_kept (x_k - x_s)² = [keep, -2 keep x_s] · [x_k², x_k] + Σ_kept x_s²: exact integers
    query_side = torch.cat([keep64, -2 * keep64 * src64], 1)
    constant = (keep64 * src64.square()).sum(1, keepdim=True)
    budget = tile_budget(device)
    chunk_size = chunk_size or max(1, budget // (10 * batch + 16 * dim))
    pair_chunk = pair_chunk or max(1, budget // (10 * dim))  # bool + float64 per pair
    sizes = torch.zeros(batch, dtype=torch.float64, device=device)
    counts = torch.zeros(batch, dim, dtype=torch.float64, device=device)
    for start in range(0, len(tokens), chunk_size):
        block = tokens[start : start + chunk_size]
        block64 = block.double()
        data_side = torch.cat([block64.square(), block64], 1).T  # (2D, Nc)
        consistent = torch.addmm(constant, query_side, data_side) == 0
        sizes += consistent.sum(1)
        query_idx, item_idx = consistent.nonzero(as_tuple=True)
        for p in range(0, len(query_idx), pair_chunk):
            q, k = query_idx[p : p + pair_chunk], item_idx[p : p + pair_chunk]
            counts.index_add_(0, q, (block[k] == src_tokens[q]).double())
    return sizes, counts


def masked_query_losses(
    tokens: torch.Tensor,
    alpha: float,
    n_queries: int,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """Per-query optimal cross-entropy in nats per dimension (float64, (M,)) at keep prob alpha."""
    n_data, dim = tokens.shape
    device = tokens.device
    query_gen = torch.Generator(device=device).manual_seed(xor_pair_seed(seed, 0))
    source_gen = torch.Generator().manual_seed(xor_pair_seed(seed, 1))
    sources = balanced_sources(n_data, n_queries, source_gen).to(device)
    histogram = position_histogram(tokens)
    batch = min(n_queries, batch_size or DEFAULT_BATCH[device.type])
    losses = torch.empty(n_queries, dtype=torch.float64, device=device)
    with tqdm(
        total=n_queries, desc=desc, unit="q", disable=None if progress else True, leave=False
    ) as bar:
        for start in range(0, n_queries, batch):
            src = sources[start : start + batch]
            u = torch.rand((len(src), dim), generator=query_gen, dtype=torch.float64, device=device)
            losses[start : start + len(src)] = masked_query_loss(
                tokens, src, u < alpha, histogram=histogram, chunk_size=chunk_size
            )
            bar.update(len(src))
    return losses


# -- per-level tables ---------------------------------------------------------------------------


def query_batch(
    n_queries: int, estimator: str, batch_size: int | None, device: torch.device | str
) -> int:
    """Queries per batch. A subset estimator's batch shares one random subset, so its queries
    are correlated and the batch, not the query, is the independent unit of its standard
    error: by default draw at least MIN_SUBSETS subsets per level so that error has enough
    batches (an explicit ``batch_size`` is used as given)."""
    if batch_size is not None:
        return min(n_queries, batch_size)
    batch = min(n_queries, DEFAULT_BATCH[torch.device(device).type])
    if ESTIMATORS[estimator].uses_subset:
        batch = min(batch, max(1, -(-n_queries // MIN_SUBSETS)))
    return batch


def query_groups(
    n_queries: int, estimator: str, batch_size: int | None, device: torch.device | str
) -> torch.Tensor | None:
    """The subset each query shares (its batch index); None for the exact estimator, whose
    queries are independent."""
    if not ESTIMATORS[estimator].uses_subset:
        return None
    return torch.arange(n_queries) // query_batch(n_queries, estimator, batch_size, device)


def mean_and_stderr(
    values: torch.Tensor, groups: torch.Tensor | None = None
) -> tuple[float, float]:
    """Mean and its standard error (float64; nan stderr when there is one unit).

    Without ``groups`` the values are independent (the usual std / sqrt(M)). With ``groups``
    (the subset each query shares, ``query_groups``) the error is that of the mean of
    independent clusters (batch means; unequal sizes by the ratio-estimator form):
    SE² = G / (G - 1) Σ_g (n_g / M)² (m_g - m)², which reduces to std(m_g) / sqrt(G) for equal
    sizes. Queries sharing a subset are positively correlated, so the per-query formula would
    be too small (measured: SNIS 1.9-4.2x, cDOL 1.1-1.4x, issue 11).
    """
    values = values.double()
    mean = float(values.mean())
    if groups is None:
        stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
        return mean, stderr
    groups = groups.to(values.device)
    n_groups = int(groups.max()) + 1
    sums = torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(
        0, groups, values
    )
    counts = torch.bincount(groups, minlength=n_groups).double()
    if n_groups < 2:
        return mean, math.nan
    residual = (sums - counts * mean) / len(values)  # (n_g / M)(m_g - m)
    stderr = math.sqrt(float(residual.square().sum()) * n_groups / (n_groups - 1))
    return mean, stderr


def level_times(schedule: Schedule, levels: int) -> torch.Tensor:
    """K times on an even grid over the schedule's time range (first: least noise)."""
    t0, t1 = schedule.t_range
    return torch.linspace(t0, t1, levels, dtype=DTYPE)


def check_counts(levels: int, queries: int) -> None:
    if levels <= 0:
        raise UserError(f"--levels {levels}: must be a positive number of noise levels")
    if queries <= 0:
        raise UserError(f"--queries {queries}: must be a positive number of queries per level")


def optimal_loss_table(
    images: np.ndarray,
    process: str,
    schedule: Schedule,
    levels: int,
    queries: int,
    *,
    estimator: str = "exact",
    subset: int | None = None,
    C: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per noise level (the DESIGN.md contract, columns TABLE_COLUMNS).

    Gaussian: ``optimal_loss`` is eps-scale per dimension, ``optimal_loss_x0`` the x0 scale,
    ``sigma_ve`` = exp(-lam / 2). Masked: nats per dimension (x0 columns are nan).
    """
    check_counts(levels, queries)
    if process != schedule.process:
        raise UserError(f"schedule {schedule.name} is a {schedule.process} schedule, not {process}")
    ESTIMATORS.check(estimator, "--estimator")
    if process not in ESTIMATORS[estimator].processes:
        raise UserError(
            f"--estimator {estimator}: the {process} process has only the "
            f"{' / '.join(estimator_names(process))} estimator"
        )
    device = resolve_device(device, local_rank=None)
    n_data = len(images)
    noise = processes.get(process)
    data = noise.optimal_data(images).to(device)
    check_estimator(estimator, n_data, subset, C)
    times = level_times(schedule, levels)
    level = schedule.level(times)
    n_candidates = subset if ESTIMATORS[estimator].uses_subset else n_data
    rows = []
    for i in range(levels):
        lam, alpha, sigma = (float(v[i]) for v in (level.log_snr, level.alpha, level.sigma))
        desc = f"level {i + 1}/{levels} lam={lam:+.2f}"
        begin = time.perf_counter()
        losses = noise.optimal_loss(
            data,
            lam,
            alpha,
            sigma,
            queries,
            estimator=estimator,
            subset=subset,
            C=C,
            seed=xor_pair_seed(seed, i),
            batch_size=batch_size,
            progress=progress,
            desc=desc,
        )
        _synchronize(device)
        seconds = time.perf_counter() - begin
        flops = 4.0 * queries * n_candidates * data.shape[1]
        rows.append(
            {
                "log_snr": lam,
                "t": float(times[i]),
                "optimal_loss": losses["optimal_loss"],
                "stderr": losses["stderr"],
                "estimator": estimator,
                "n_data": n_data,
                "n_queries": queries,
                "process": process,
                "alpha": alpha,
                "sigma": sigma,
                "sigma_ve": losses["sigma_ve"],
                "optimal_loss_x0": losses["optimal_loss_x0"],
                "stderr_x0": losses["stderr_x0"],
                "subset": n_candidates,
                "C": _c_value(estimator, n_data, subset, C),
                "seconds": seconds,
                "queries_per_s": queries / seconds,
                "tflops": flops / seconds / 1e12,
            }
        )
        log.info(
            "%s: optimal loss %.6g ± %.2g, %.0f queries/s, %.3f TFLOP/s (%.2f s)%s",
            desc,
            losses["optimal_loss"],
            losses["stderr"],
            queries / seconds,
            flops / seconds / 1e12,
            seconds,
            _peak_memory(device),
        )
    return rows


def _peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def _c_value(estimator: str, n_data: int, subset: int | None, C: float | None) -> float:
    return ESTIMATORS[estimator].c_value(n_data, subset, C)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the estimator study ------------------------------------------------------------------------

STUDY_COLUMNS = (
    "log_snr",
    "t",
    "sigma_ve",
    "estimator",
    "subset",
    "C",
    "C_factor",
    "n_data",
    "n_queries",
    "estimate",
    "stderr",
    "exact",
    "exact_stderr",
    "bias",
    "bias_stderr",
    "relative_bias",
    "variance",
    "rmse",
)


def convergence_study(
    images: np.ndarray,
    schedule: Schedule,
    levels: int,
    queries: int,
    subsets: Sequence[int],
    c_factors: Sequence[float] = (1.0, 2.0, 4.0, 16.0),
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Bias and variance of SNIS / DOL / cDOL against the exact estimator (eps scale).

    At each level every estimator sees the same queries as the exact one, so its bias is
    measured pairwise: bias = mean(est_q - exact_q) with stderr std(est_q - exact_q)/sqrt(M).
    ``variance`` is the estimator's variance at M queries (stderr²), ``rmse`` = sqrt(bias² +
    variance). cDOL runs once per C = factor * N / L, and at the default C of ``default_c``
    (what ``--estimator cdol`` uses, about 2N/L) unless a factor already gives it.
    """
    check_counts(levels, queries)
    if schedule.process not in study_kinds():
        raise UserError(
            f"schedule {schedule.name}: the estimator study is for"
            f" {' / '.join(study_kinds())} schedules"
        )
    device = resolve_device(device, local_rank=None)
    data = images_to_unit(images).to(device)
    n_data = len(data)
    for L in subsets:
        check_estimator("cdol", n_data, L, None, flag="--subsets")
    for factor in c_factors:
        if not factor > 0:
            raise UserError(f"--C-factors {factor}: must be positive")
    # one batch size for all estimators: the queries are then the same, query by query
    batch_size = query_batch(queries, "snis", batch_size, device)
    times = level_times(schedule, levels)
    level = schedule.level(times)
    rows = []
    for i in range(levels):
        lam, alpha, sigma = (float(v[i]) for v in (level.log_snr, level.alpha, level.sigma))
        scale = math.exp(lam)
        common = dict(
            seed=xor_pair_seed(seed, i),
            batch_size=batch_size,
            progress=progress,
            desc=f"level {i + 1}/{levels} lam={lam:+.2f}",
        )
        exact = gaussian_query_losses(data, alpha, sigma, queries, **common) * scale
        exact_mean, exact_err = mean_and_stderr(exact)
        for L in subsets:
            runs = [("snis", math.nan, math.nan), ("dol", 1.0, L / n_data)]
            runs += [("cdol", f * n_data / L, f) for f in c_factors]
            default = default_c(n_data, L)
            if not any(math.isclose(c, default, rel_tol=1e-9) for _, c, _ in runs[2:]):
                runs.append(("cdol", default, default * L / n_data))
            for estimator, c_value, factor in runs:
                est = (
                    gaussian_query_losses(
                        data,
                        alpha,
                        sigma,
                        queries,
                        estimator=estimator,
                        subset=L,
                        C=None if estimator == "snis" else c_value,
                        **common,
                    )
                    * scale
                )
                groups = query_groups(queries, estimator, batch_size, device)
                mean, err = mean_and_stderr(est, groups)
                bias, bias_err = mean_and_stderr(est - exact, groups)
                rows.append(
                    {
                        "log_snr": lam,
                        "t": float(times[i]),
                        "sigma_ve": math.exp(-lam / 2),
                        "estimator": estimator,
                        "subset": L,
                        "C": c_value,
                        "C_factor": factor,
                        "n_data": n_data,
                        "n_queries": queries,
                        "estimate": mean,
                        "stderr": err,
                        "exact": exact_mean,
                        "exact_stderr": exact_err,
                        "bias": bias,
                        "bias_stderr": bias_err,
                        "relative_bias": bias / exact_mean if exact_mean > 0 else math.nan,
                        "variance": err**2,
                        "rmse": math.sqrt(bias**2 + err**2),
                    }
                )
        log.info(
            "level %d/%d lam=%+.2f: exact %.6g ± %.2g", i + 1, levels, lam, exact_mean, exact_err
        )
    return rows


# -- the critical noise level -------------------------------------------------------------------


def critical_log_snr(
    log_snr: Sequence[float], loss: Sequence[float], rel_tol: float = 1e-3
) -> float | None:
    """The log-SNR where the optimal loss leaves ~0, going from low to high noise.

    ``loss`` must be increasing with noise (x0-scale Gaussian loss, masked cross-entropy). The
    critical level is where the loss first reaches ``rel_tol`` times its largest value,
    interpolated linearly between the two levels around it; None if it never does, or if the
    least noisy level is already above.
    """
    lam = np.asarray(log_snr, dtype=float)
    values = np.asarray(loss, dtype=float)
    keep = np.isfinite(lam) & np.isfinite(values)
    lam, values = lam[keep], values[keep]
    if len(lam) < 2:
        return None
    order = np.argsort(-lam)  # least noise first
    lam, values = lam[order], values[order]
    threshold = rel_tol * values.max()
    above = np.nonzero(values >= threshold)[0]
    if len(above) == 0 or above[0] == 0:
        return None
    j = above[0]
    frac = (threshold - values[j - 1]) / (values[j] - values[j - 1])
    return float(lam[j - 1] + frac * (lam[j] - lam[j - 1]))
