"""Seeds of every random stream: a function of (seed, rank, step, stream), so a resumed or
replayed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import numpy as np


def step_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, rank, step, stream)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


NOISE, DROPOUT, ORDER, EVAL, SAMPLE = range(5)  # streams of step_seed
