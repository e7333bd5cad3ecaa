"""Runs of the embedded default's spec with its grid widened to every weighting: the default
itself runs only the arms of the papers' claims, and tests tuned on other arms use these."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from diffobj import spec

ROOT = Path(__file__).resolve().parents[1]
WEIGHTINGS = ["elbo", "simple", "sigmoid", "fm", "iddpm", "edm"]
GAUSSIAN_WEIGHTINGS = [w for w in WEIGHTINGS if w != "simple"]  # simple is masked diffusion's


def default_run(run_id: str) -> spec.Run:
    """The run ``run_id`` of config/config.yaml, its grid widened to every weighting."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for entry in raw["grid"]:
        entry["weighting"] = WEIGHTINGS if entry["process"] == "masked" else GAUSSIAN_WEIGHTINGS
    path = Path(tempfile.mkdtemp()) / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return spec.load(path, root=ROOT).run(run_id)
