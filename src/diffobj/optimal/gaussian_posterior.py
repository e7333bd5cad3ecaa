"""Gaussian: the optimal posterior's error of a batch of queries (docs/science.md §3).

z = alpha x + sigma eps with x in [-1, 1]^D, lam = log(alpha^2 / sigma^2): the optimal
denoiser is the posterior mean E[x|z] = Σ_n π_n(z) x_n, π = softmax_n(-||x̂ - x_n||² / 2s²)
with x̂ = z / alpha and s² = e^-lam. The optimal loss per dimension in the eps scale is
E||eps - eps*||² / D = e^lam E||x - E[x|z]||² / D (x0 scale without the e^lam). The points the
softmax runs over are the estimator's plan (diffobj.optimal.estimators).

Every estimator works in the per-query error form: the error x_src - E[x|z] is accumulated as
Σ_k w_k (x_k - x_src) / Σ_k w_k with the source's own term (exactly zero) left out of the
numerator, so nothing of size 1 is subtracted from something of size 1 (no A - B), and the
accumulators are float64 while the matmuls are float32. The float32 logits are off by up to
~e^lam sqrt(D) 2^-24 ||x̂|| ||x|| (``logit_error_bound``: ~1e3 at lam = 16 on 32x32x3); where
that exceeds ``LOGIT_TOL`` they only select the candidates that could carry weight, whose logits
are then recomputed in float64 from the differences x̂ - x_k (``posterior_sq_error``). Tested
against a float64 brute force on 32x32x3 and 64x64x3 images with near-duplicates up to lam = 24.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from diffobj.optimal.estimators import ESTIMATORS, check_estimator, plan_candidates
from diffobj.optimal.inputs import tile_budget
from diffobj.optimal.queries import balanced_sources, query_batch
from diffobj.seeds import xor_pair_seed

LOG_TINY = -87.0  # exp(-87) ~ 1.6e-38, just above float32's subnormals
LOGIT_TOL = 0.05  # float32 logits off by more than this (low noise): contenders in float64
CONTENDER_BYTES = 64 * 2**20  # working memory of one chunk of float64 contender differences


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
