"""The recipe specs: they validate, dry-run, and hold the originals' numbers.

The originals' values are written here as they were read (docs/recipes.md gives file and line):
EDM's train.py and training_loop.py, MD4's configs/md4/cifar10.py and train.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffobj import spec
from diffobj.models import build_model, count_parameters

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
EDM = ROOT / "config" / "experiments" / "edm_cifar10.yaml"
MD4 = ROOT / "config" / "experiments" / "md4_cifar10.yaml"


@pytest.mark.parametrize(("path", "runs"), [(EDM, 2), (MD4, 1)])
def test_recipe_dry_runs(tmp_path, path, runs):
    # the spec as in a checkout at tmp_path: its data/ path starts there (diffobj.spec.spec_base)
    (tmp_path / "config").symlink_to(ROOT / "config")
    linked = tmp_path / path.relative_to(ROOT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"stand-in: a dry run reads none")
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--config", f"spec={linked}", "-n"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^train\s+{runs}$", result.stdout + result.stderr, re.M)


def test_edm_recipe_is_edms():
    loaded = spec.load(EDM, root=ROOT)
    t = loaded.spec.training
    assert t.steps * t.batch_size == 200_000_000  # --duration 200 (Mimg), --batch 512
    assert t.batch_size == 512 and t.lr == 1e-3  # --lr 10e-4
    assert abs(t.warmup_steps * t.batch_size - 10_000_000) < t.batch_size  # lr_rampup_kimg
    assert t.ema_halflife_images == 500_000  # --ema 0.5 (Mimg)
    assert (t.augment_p, t.precision, t.weight_decay, t.adam_beta2) == (0.12, "fp32", 0, 0.999)
    for name, model in loaded.spec.models.items():
        assert model.preset == "edm_ddpmpp" and model.dropout == 0.13, name  # --dropout 0.13
        net = build_model(model.model_dump(), "gaussian", (3, 32, 32))
        # EDM's DDPM++ CIFAR-10 network has 55,732,739 parameters without labels (issue 13,
        # counted on NVlabs/edm); + the augment Linear (9 x 128, no bias) + the label Linear
        expected = 55_732_739 + 9 * 128 + (10 * 128 + 128 if model.num_classes else 0)
        assert count_parameters(net) == expected, name
    s = loaded.spec.sampling
    assert (s.gaussian_sampler, s.gaussian_steps, s.sigma_min, s.sigma_max) == (
        "heun",
        18,
        0.002,
        80.0,
    )
    assert s.num == 50_000 and loaded.spec.evaluation.fid
    run = loaded.runs[0]
    assert (run.schedule, run.weighting) == ("edm_lognormal", "edm")


def test_md4_recipe_is_md4s():
    loaded = spec.load(MD4, root=ROOT)
    t = loaded.spec.training
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps) == (2_000_000, 256, 2e-4, 100)
    assert (t.lr_decay, t.adam_beta2, t.weight_decay) == ("cosine", 0.99, 0.01)
    steps_half = t.ema_halflife_images / t.batch_size  # EMA rate 0.9999 per step
    assert 0.9999**steps_half == pytest.approx(0.5, abs=1e-4)
    lam_min, lam_max = loaded.spec.processes["masked"].log_snr_range
    alpha_min = 1 / (1 + math.exp(-lam_min))  # MD4 clips alpha to [1e-4, 1 - 1e-4]
    assert alpha_min == pytest.approx(1e-4, rel=1e-3) and lam_max == -lam_min
    run = loaded.runs[0]
    assert (run.schedule, run.weighting) == ("masked_linear", "elbo")
    model = loaded.spec.models[run.model]
    assert (model.preset, model.channels, model.num_blocks, model.dropout) == (
        "md4_unet",
        128,  # feature_dim
        32,  # n_layers
        0.1,  # dropout_rate
    )
    assert loaded.spec.sampling.masked_steps == 256 and loaded.spec.evaluation.nll
