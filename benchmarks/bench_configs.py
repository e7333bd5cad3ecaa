"""Shared by the benchmarks: the network sizes and a self-contained run config."""

from __future__ import annotations

from pathlib import Path

from diffobj.run_config import RunConfig

DDPMPP = {
    "channels": 128,
    "channel_mult": [2, 2, 2],
    "num_blocks": 4,
    "attention_resolutions": [16],
    "dropout": 0.13,
}
CPU_SMALL = {
    "channels": 32,
    "channel_mult": [1, 2, 2],
    "num_blocks": 1,
    "attention_resolutions": [8],
}


def run_config(
    kind: str,
    model: dict,
    batch: int,
    images: Path | str,
    precision: str = "bf16",
    compile_: bool = False,
) -> RunConfig:
    """A run config (vp_cosine / md4_cosine, ELBO weighting) around ``model``."""
    schedule = (
        {
            "name": "vp_cosine",
            "process": "gaussian",
            "alpha": "cos(pi * t / 2)",
            "sigma": "sin(pi * t / 2)",
        }
        if kind == "gaussian"
        else {"name": "md4_cosine", "process": "masked", "alpha": "1 - cos(pi * (1 - t) / 2)"}
    )
    process = {
        "name": kind,
        "kind": kind,
        "log_snr_range": [-10.0, 10.0] if kind == "gaussian" else [-9.21, 9.21],
    }
    if kind == "gaussian":
        process.update(prediction="eps", sigma_data=0.5)
    raw = {
        "run_id": f"bench-{kind}",
        "seed": 0,
        "data": {"name": "random", "images": str(images)},
        "process": process,
        "schedule": schedule,
        "weighting": {"name": "elbo", "expr": "1"},
        "model": {"name": "bench", **model},
        "training": {
            "steps": 10**9,
            "batch_size": batch,
            "lr": 1e-3,
            "warmup_steps": 100,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "ema_halflife_images": 500_000,
            "checkpoint_every": 10**9,
            "log_every": 10**9,
            "precision": precision,
            "compile": compile_,
            "log_snr_bins": 16,
            "adaptive": False,
        },
    }
    return RunConfig(raw["run_id"], raw)
