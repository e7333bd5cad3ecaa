"""Seeds of every random stream: a function of (seed, rank, step, stream), so a resumed or
replayed run draws exactly what an uninterrupted one draws.

A training step's per-sample draws (noise levels, noise, masks, augmentations, label dropout)
come from one stream shared by all ranks, through a ``Shard``: every rank draws the values of
the whole global batch and keeps its own rows, so sample i of a step gets the same draws
whether 1 or 8 processes train (each rank still gets different draws: its rows differ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


def step_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, rank, step, stream): the first 64-bit word
    of ``SeedSequence(keys)`` shifted right by one, i.e. ``(w1 << 31) | (w0 >> 1)`` of its
    first two 32-bit words w0, w1 (tests/test_seeds.py)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def xor_pair_seed(*keys: int) -> int:
    """A 63-bit seed from integers (the optimal-loss and bounds estimators' (seed, level,
    stream)): ``(w0 << 31) ^ w1`` of the first two 32-bit words of ``SeedSequence(keys)``.

    The same SeedSequence as ``step_seed``, combined differently: each gives other numbers for
    the same keys, and neither is a function of the other's value (``step_seed`` drops bit 0 of
    w0, which this one keeps), so both stay, each where its numbers were drawn before."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


NOISE, DROPOUT, ORDER, EVAL, SAMPLE = range(5)  # streams of step_seed


@dataclass(frozen=True)
class Shard:
    """Rows [start, start + size) of a global batch of ``total``, drawn from ``generator``."""

    generator: torch.Generator
    start: int
    size: int
    total: int

    def rows(self, whole: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return whole.narrow(dim, self.start, self.size)


Draws = torch.Generator | Shard | None


def generator_of(draws: Draws) -> torch.Generator | None:
    """The generator behind ``draws`` (for draws that are not per sample, e.g. one offset)."""
    return draws.generator if isinstance(draws, Shard) else draws


def batch_size(draws: Draws, local: int) -> int:
    """How many samples to draw for: the global batch of a Shard, else ``local``."""
    if not isinstance(draws, Shard):
        return local
    if local != draws.size:
        raise ValueError(f"a shard of {draws.size} samples asked for {local}")
    return draws.total


def draw(
    fn: Callable[..., torch.Tensor],
    shape: Sequence[int],
    draws: Draws,
    dim: int = 0,
    **kwargs,
) -> torch.Tensor:
    """``fn(shape, generator=..., **kwargs)`` with the batch along ``dim``; for a Shard, the
    global batch's draw and this rank's rows of it."""
    shape = list(shape)
    shape[dim] = batch_size(draws, shape[dim])
    whole = fn(tuple(shape), generator=generator_of(draws), **kwargs)
    return draws.rows(whole, dim) if isinstance(draws, Shard) else whole
