"""Learning-rate schedules: linear warmup (EDM's ramp), then constant or MD4's cosine decay.

lr(step) = lr * min(1, (step + 1) / warmup_steps) * decay(step), where decay is 1 (``none``)
or 0.5 (1 + cos(pi r)), r = clip((step - warmup_steps) / (steps - warmup_steps), 0, 1)
(``cosine``, MD4's train.py ``get_learning_rate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DECAYS = ("none", "cosine")


def lr_at(training: Mapping[str, Any], step: int) -> float:
    """The learning rate of (0-based) ``step`` under the run's ``training`` section."""
    warmup = int(training.get("warmup_steps", 0))
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return float(training["lr"]) * ramp * decay(training, step)


def decay(training: Mapping[str, Any], step: int) -> float:
    kind = training.get("lr_decay", "none")
    if kind == "none":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"training.lr_decay must be one of {DECAYS}, got {kind!r}")
    warmup, steps = int(training.get("warmup_steps", 0)), int(training["steps"])
    ratio = min(1.0, max(0.0, (step - warmup) / max(steps - warmup, 1)))
    return 0.5 * (1 + math.cos(math.pi * ratio))
