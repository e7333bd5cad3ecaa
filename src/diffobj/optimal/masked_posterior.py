"""Masked: the optimal posterior's cross-entropy of a batch of queries, by the consistent set.

Keep probability alpha, tokens 0..255: the posterior is uniform over the consistent set
C = {n : x_n agrees with the query on its kept tokens}; the optimal predictor at a masked
position is the value distribution over C, and the optimal loss is Σ_masked -log μ*(x_d) / D
nats per dimension. Consistency is an exact integer test: Σ_kept (x_kd - x_srcd)² = 0, computed
with one float64 matmul per chunk (every partial sum is an integer below 2^53).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from diffobj.optimal.inputs import tile_budget
from diffobj.optimal.queries import DEFAULT_BATCH, balanced_sources
from diffobj.processes.masked import VOCAB
from diffobj.seeds import xor_pair_seed


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
