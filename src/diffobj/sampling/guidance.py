"""Class-conditional sampling: balanced class labels and classifier-free guidance (CFG).

A class-conditional network (``models.<m>.num_classes`` = K > 0) is trained with label
dropout: a dropped label is the extra class index K, the "no label" class, so one network is
both the conditional model p(. | c) and the unconditional one p(. | ∅) (Ho & Salimans 2022).

Guidance with scale w >= 0 (w = 0: the plain conditional model):
- Gaussian, on the noise prediction:  eps_w = (1 + w) eps(z, c) - w eps(z, ∅).
- Masked, on the denoiser's clean-token logits (logit-space CFG as in masked generative
  image models, e.g. MUSE; Schiff et al. 2024's D-CFG tempers the whole reverse transition
  instead, which also moves the reveal probability; attributions from memory, not checked):
      log mu_w(x | z, c) = (1 + w) log mu(x | z, c) - w log mu(x | z, ∅)   (log-softmax terms),
  i.e. mu_w ∝ mu_c^(1 + w) mu_∅^(-w) per token. The sampler's softmax renormalises; the reveal
  probability (alpha_s - alpha_t) / (1 - alpha_t) is untouched, so guidance changes which
  value a revealed token takes, not when it is revealed.
Both halves run as one doubled batch, so guidance costs one network call of twice the size.

Samples are class-balanced: sample i has label i mod K (``class_labels``), so every class gets
floor(num / K) or one more samples, and any prefix of the samples is as balanced as it can be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffobj import processes
from diffobj.errors import UserError
from diffobj.objectives.schedules import Level

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]
MakeModelFn = Callable[[torch.Tensor | None], ModelFn]  # labels -> denoiser callable


def class_labels(num: int, num_classes: int) -> np.ndarray | None:
    """Balanced labels 0, 1, .., K-1, 0, 1, .. (int64); None for an unconditional model."""
    if num_classes <= 0:
        return None
    return np.arange(num, dtype=np.int64) % num_classes


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """(1 + w) cond - w uncond: the one extrapolation both processes use."""
    return (1 + scale) * cond - scale * uncond


def check_guidance(scale: float, num_classes: int) -> None:
    if not np.isfinite(scale) or scale < 0:
        raise UserError(f"--guidance must be a finite number >= 0, got {scale}")
    if scale > 0 and num_classes <= 0:
        raise UserError(
            f"--guidance {scale}: the model is unconditional (model num_classes = 0); "
            "classifier-free guidance needs a class-conditional run"
        )


def _doubled(level: Level) -> Level:
    return Level(*(torch.cat([v, v]) for v in level.__dict__.values()))


def guided(
    make_fn: MakeModelFn, labels: torch.Tensor, null_class: int, scale: float, kind: str
) -> ModelFn:
    """The denoiser for ``labels`` with guidance ``scale``; ``make_fn(labels)`` builds the
    network's callable (``null_class`` = K, the "no label" index the network was trained with)."""
    if scale == 0:
        return make_fn(labels)
    both = make_fn(torch.cat([labels, torch.full_like(labels, null_class)]))

    def guided_fn(z: torch.Tensor, level: Level) -> torch.Tensor:
        out = both(torch.cat([z, z]), _doubled(level))
        cond, uncond = out.to(torch.promote_types(out.dtype, torch.float32)).chunk(
            2
        )  # bf16 -> fp32
        process = processes.get(kind)
        return combine(process.normalise_output(cond), process.normalise_output(uncond), scale)

    return guided_fn


def run_class_labels(run_dir: str | Path, num: int) -> np.ndarray | None:
    """The labels ``sample_run`` gives ``num`` samples of a trained run (None: unconditional)."""
    from diffobj.run_config import load_run_config

    config = load_run_config(Path(run_dir) / "config.yaml")
    return class_labels(num, int(config.model.get("num_classes", 0) or 0))
