"""One training step, the log row of a log step and the refresh of a gap density.

Every draw of a step is a function of (seed, rank, step): the data order, the noise stream
(rank 0's seed for all ranks, each keeping its rows, ``seeds.Shard``) and the dropout stream.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffobj.devices import peak_memory_mb
from diffobj.objectives.densities import bin_centres
from diffobj.runs import make_model_fn
from diffobj.seeds import DROPOUT, NOISE, Shard, draw, step_seed
from diffobj.training import lr as lr_mod
from diffobj.training.setup import Setup
from diffobj.training.train_data import model_input
from diffobj.training.train_log import bin_column


def lr_at(s: Setup, step: int) -> float:
    return lr_mod.lr_at(s.config.training, step)


def train_step(s: Setup) -> None:
    state, seed, rank, step = s.state, s.config.seed, s.dist.rank, s.state.step
    idx = s.order.indices(step, s.batch, s.dist)
    x = model_input(s.data.batch(idx, s.device), s.config.kind, s.device)
    # one noise stream for all ranks (rank 0's seed), each keeping its rows of the batch
    state.noise.manual_seed(step_seed(seed, 0, step, NOISE))
    share = s.batch // s.dist.world
    draws = Shard(state.noise, rank * share, share, s.batch)
    torch.manual_seed(step_seed(seed, rank, step, DROPOUT))  # dropout draws
    labels = labels_of(s, idx, draws)
    augmented = None
    if s.augment is not None:  # EDM's non-leaking augmentation, labels to the network
        x, augmented = s.augment(x, draws)
    model_fn = make_model_fn(s.train_net, s.config, s.device, labels, augmented)
    state.net.train()
    terms = s.objective(model_fn, x, draws)
    loss = terms.loss.mean()
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(state.params, float(s.config.training["grad_clip"]))
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(s, step)
    state.optimizer.step()
    state.step += 1
    state.ema.update(state.step * s.batch, s.batch)
    state.window.add(terms.log_snr, terms.error, loss, grad_norm)
    if state.density is not None:
        # the gap is binned per sample: error - J*(lam_i), not the bin's error - J*(centre)
        state.refresh_window.add(terms.log_snr, terms.excess, loss, grad_norm)


def labels_of(s: Setup, idx: torch.Tensor, draws: Shard) -> torch.Tensor | None:
    labels = s.data.labels_of(idx, s.device)
    if labels is None:
        return None
    p = float(s.config.model.get("label_dropout", 0.0))
    if p > 0:  # classifier-free guidance: the "no label" class index is num_classes
        num_classes = int(s.config.model.get("num_classes", 0) or 0)
        drop = draw(torch.rand, labels.shape, draws, device=s.device) < p
        labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
    return labels


def log_step(s: Setup, seconds: float, images: int) -> dict[str, Any]:
    """The log row of the window since the last log step (appended to the state's logs)."""
    state = s.state
    w = state.window.reduced(s.dist)
    steps = max(state.window.steps, 1)
    row: dict[str, Any] = {
        "step": state.step,
        "images_seen": state.step * s.batch,
        "loss": float(w["loss_sum"]) / steps,
        "grad_norm": float(w["grad_sum"]) / steps,
        "lr": lr_at(s, state.step - 1),
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "peak_mem_mb": peak_memory_mb(s.device),
    }
    for k, centre in enumerate(bin_centres(s.edges).tolist()):
        count = float(w["count"][k])
        error = float(w["error_sum"][k]) / count if count else ""
        row[bin_column(k)] = error
        if count:
            state.bin_rows.append(
                {
                    "step": state.step,
                    "bin": k,
                    "log_snr": centre,
                    "error": error,
                    "count": int(count),
                }
            )
    state.log_rows.append(row)
    state.window.reset()
    return row


def refresh_density(s: Setup) -> None:
    w = s.state.refresh_window.reduced(s.dist)
    s.state.density.update(w["error_sum"], w["count"])
    s.state.refresh_window.reset()
