"""eval_bins.csv: the trained EMA model's unweighted error at each log-SNR bin centre."""

from __future__ import annotations

import math
from typing import Any

import torch

from diffobj.objectives.densities import bin_centres, evaluate_error, level_at
from diffobj.runs import make_model_fn
from diffobj.seeds import EVAL, step_seed
from diffobj.training.setup import Setup
from diffobj.training.train_data import model_input


@torch.no_grad()
def evaluate_bins(s: Setup) -> list[dict[str, Any]]:
    """The EMA model's unweighted error at each bin centre on (a seeded subset of) the data:
    log_snr, error (mean), stderr, n; every draw seeded by (seed, bin, chunk start, EVAL)."""
    config, device, data, kind = s.config, s.device, s.data, s.config.kind
    model_fn = make_model_fn(s.state.ema.net.eval(), config, device)
    g = torch.Generator().manual_seed(step_seed(config.seed, 0, 0, EVAL))
    n = min(s.options.eval_images, data.count)
    idx = torch.randperm(data.count, generator=g)[:n].sort().values
    noise = torch.Generator(device=device)
    batch = max(s.batch, 256)
    rows = []
    for k, lam in enumerate(bin_centres(s.edges).tolist()):
        errors = []
        for start in range(0, n, batch):
            chunk = idx[start : start + batch]
            x = model_input(data.batch(chunk, device), kind, device)
            noise.manual_seed(step_seed(config.seed, k, start, EVAL))
            lam_t = torch.full((x.shape[0],), lam, dtype=torch.float64, device=device)
            level = level_at(s.objective.schedule, lam_t)
            errors.append(evaluate_error(kind, model_fn, x, level, noise).double().cpu())
        e = torch.cat(errors)
        stderr = float(e.std() / math.sqrt(len(e))) if len(e) > 1 else float("nan")
        rows.append({"log_snr": lam, "error": float(e.mean()), "stderr": stderr, "n": len(e)})
    return rows
