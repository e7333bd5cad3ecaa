"""Samplers against closed forms: the exact denoisers of Gaussian data and of a tiny data set."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffobj.errors import UserError
from diffobj.objectives import schedules
from diffobj.processes.masked import MASK, VOCAB
from diffobj.sampling.config import requested
from diffobj.sampling.samplers import (
    ancestral,
    ddim,
    ddpm,
    edm_sigmas,
    heun,
    image_grid,
    noise_grid,
    sample_run,
    to_uint8,
    write_samples,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


ROOT = Path(__file__).resolve().parents[1]
MU, S = 0.3, 0.5  # the data: x ~ N(MU, S^2 I)
SHAPE = (4000, 1, 4, 4)


def gaussian_eps_star(z: torch.Tensor, level) -> torch.Tensor:
    """E[eps | z] for x ~ N(mu, s^2 I), z = alpha x + sigma eps: z ~ N(alpha mu, alpha^2 s^2 +
    sigma^2) and Cov(eps, z) = sigma, so eps* = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2)."""
    lv = level.expand(z.dim())
    a, s = lv.alpha, lv.sigma
    return (s * (z.double() - a * MU) / (a * a * S * S + s * s)).float()


def schedule(name: str, log_snr_range=(-10.0, 10.0)) -> schedules.Schedule:
    return schedules.build(name, schedules.load_library()[name], log_snr_range)


@pytest.mark.parametrize("schedule_name", ["vp_cosine", "rectified_flow"])
@pytest.mark.parametrize(
    ("sampler", "grid", "steps", "extra"),
    [
        (ddpm, "uniform", 1000, {}),
        (ddim, "uniform", 400, {"eta": 0.0}),
        (ddim, "uniform", 400, {"eta": 0.5}),
        (heun, "edm", 50, {}),
    ],
)
def test_gaussian_samplers_reproduce_gaussian_data(schedule_name, sampler, grid, steps, extra):
    sch = schedule(schedule_name)
    x = sampler(
        gaussian_eps_star,
        sch,
        noise_grid(sch, steps, grid),
        SHAPE,
        generator=torch.Generator().manual_seed(0),
        **extra,
    )
    # 64k values: Monte Carlo error ~0.002 on the mean, ~0.6% on the variance; the rest is
    # the samplers' discretisation error, which vanishes as steps grow
    assert abs(float(x.mean()) - MU) < 0.01
    assert abs(float(x.var()) / S**2 - 1) < 0.04


def test_heun_converges_with_steps():
    errors = []
    for steps in (10, 18, 50):
        sch = schedule("vp_cosine")
        x = heun(
            gaussian_eps_star,
            sch,
            noise_grid(sch, steps, "edm"),
            SHAPE,
            generator=torch.Generator().manual_seed(0),
        )
        errors.append(abs(float(x.var()) / S**2 - 1))
    assert errors[0] > errors[1] > errors[2]


def test_ddpm_is_ddim_with_eta_one():
    """DDIM's eta = 1 is the ancestral posterior step; with the same noise both agree."""
    sch = schedule("vp_cosine")
    grid = noise_grid(sch, 20, "uniform")
    a = ddpm(
        gaussian_eps_star, sch, grid, (64, 1, 4, 4), generator=torch.Generator().manual_seed(3)
    )
    b = ddim(
        gaussian_eps_star,
        sch,
        grid,
        (64, 1, 4, 4),
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_heun_calls_the_network_2n_minus_1_times():
    calls = []

    def counting(z, level):
        calls.append(1)
        return gaussian_eps_star(z, level)

    sch = schedule("vp_cosine")
    heun(
        counting,
        sch,
        noise_grid(sch, 18, "edm"),
        (2, 1, 4, 4),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(calls) == 35


def test_edm_grid_is_clipped_to_the_log_snr_range():
    sig = edm_sigmas(schedule("vp_cosine"), 18)
    assert len(sig) == 19 and sig[-1] == 0
    assert float(sig[0]) == pytest.approx(80.0)  # EDM's sigma_max, inside e^{10/2} = 148
    assert float(sig[-2]) == pytest.approx(math.exp(-10 / 2))  # e^{-lam_max/2} > EDM's 0.002
    narrow = edm_sigmas(schedule("vp_cosine", (-4.0, 10.0)), 18)
    assert float(narrow[0]) == pytest.approx(math.exp(4 / 2))
    inner = sig[:-1] ** (1 / 7)  # rho = 7: uniform in sigma^(1/7)
    torch.testing.assert_close(inner[1:] - inner[:-1], (inner[1:] - inner[:-1]).mean().expand(17))


# -- masked -------------------------------------------------------------------------------------------

TRAIN = torch.tensor(  # five "images" of 1 x 2 x 2 tokens, every token value distinct
    [[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43], [250, 251, 252, 255]]
).reshape(5, 1, 2, 2)


def optimal_logits(z: torch.Tensor, level) -> torch.Tensor:
    """The exact optimal masked denoiser of TRAIN: the empirical distribution of a masked token
    given the unmasked ones, i.e. the token frequencies among training items consistent with z."""
    flat_z, flat_x = z.flatten(1), TRAIN.flatten(1)
    unmasked = flat_z != MASK
    consistent = ((flat_x[None] == flat_z[:, None]) | ~unmasked[:, None]).all(-1)  # (B, N)
    weights = consistent.double() / consistent.sum(1, keepdim=True)
    # probability of item n's token at position d: the weight of all items sharing that token
    same = (flat_x[:, None, :] == flat_x[None, :, :]).double()  # (N, N', D)
    prob = torch.einsum("bm,nmd->bnd", weights, same)
    logits = torch.full((len(z), VOCAB, flat_x.shape[1]), -1e30)  # log 0 for every other value
    positions = torch.arange(flat_x.shape[1])
    for n, item in enumerate(flat_x):
        logits[:, item, positions] = prob[:, n].log().clamp_min(-1e30).float()
    return logits.reshape(len(z), VOCAB, *z.shape[1:])


def test_masked_ancestral_with_optimal_denoiser_returns_training_items():
    sch = schedule("md4_cosine", (-9.21, 9.21))
    z = ancestral(
        optimal_logits,
        sch,
        noise_grid(sch, 1000, "uniform"),
        (2000, 1, 2, 2),
        generator=torch.Generator().manual_seed(0),
    )
    assert (z != MASK).all()
    matches = (z.flatten(1)[:, None] == TRAIN.flatten(1)[None]).all(-1)  # (samples, items)
    # exact unless two tokens are revealed in the same step before any is known
    # (probability ~ D * d_alpha / 2 ~ 0.3% per sample with 1000 steps)
    assert matches.any(1).float().mean() > 0.98
    counts = matches.sum(0).double()
    expected = counts.sum() / 5
    assert ((counts - expected).abs() < 5 * (expected * 0.8) ** 0.5).all()  # uniform over items


def test_masked_ancestral_last_step_reveals_everything():
    sch = schedule("md4_cosine", (-9.21, 9.21))
    grid = noise_grid(sch, 3, "uniform")
    z = ancestral(
        optimal_logits, sch, grid, (50, 1, 2, 2), generator=torch.Generator().manual_seed(1)
    )
    assert (z != MASK).all() and z.max() < VOCAB


# -- outputs ----------------------------------------------------------------------------------------


def test_uint8_rounding_is_edm_s():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2]).reshape(1, 1, 1, 6)
    assert to_uint8(x, "gaussian").ravel().tolist() == [0, 0, 128, 191, 255, 255]
    tokens = torch.tensor([0, 7, 255]).reshape(1, 1, 1, 3)
    assert to_uint8(tokens, "masked").ravel().tolist() == [0, 7, 255]


def test_write_samples_writes_npz_and_png(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    png = write_samples(images, tmp_path / "samples.npz")
    with np.load(tmp_path / "samples.npz") as f:
        np.testing.assert_array_equal(f["images"], images)
    assert png == tmp_path / "samples.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = image_grid(images)
    assert grid.shape == (3 * 33 + 1, 4 * 33 + 1, 1)  # 3 rows x 4 columns of 32 px (8 px x 4)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Two-step trainings of the embedded default's tiny model on 16 random images."""
    from diffobj import spec
    from diffobj.training.train import TrainOptions, train

    tmp = tmp_path_factory.mktemp("runs")
    images = tmp / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    loaded = spec.load(ROOT / "config" / "config.yaml", root=ROOT)
    runs = {}
    for kind, run_id in (
        ("gaussian", "digits-gaussian-vp_cosine-elbo-mlp-s0"),
        ("masked", "digits-masked-md4_cosine-elbo-mlp-s0"),
    ):
        raw = loaded.run(run_id).resolved()
        raw["data"]["images"] = str(images)
        raw["model"]["channels"] = 8
        raw["training"].update(steps=2, batch_size=4, log_every=1)
        cfg = tmp / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        train(cfg, tmp / kind, TrainOptions(device="cpu", progress=False, eval_images=4))
        runs[kind] = tmp / kind
    return runs


@pytest.mark.parametrize(
    ("kind", "sampler"),
    [("gaussian", "ddpm"), ("gaussian", "ddim"), ("gaussian", "heun"), ("masked", "ancestral")],
)
def test_sampling_a_trained_run(trained_runs, kind, sampler):
    images = sample_run(
        trained_runs[kind], requested(sampler, 3, 5), batch_size=2, progress=False, device="cpu"
    )
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    again = sample_run(
        trained_runs[kind], requested(sampler, 3, 5), batch_size=2, progress=False, device="cpu"
    )
    np.testing.assert_array_equal(images, again)  # seeded


def test_md4_sampling_options_on_a_trained_run(trained_runs, tmp_path):
    options = {"grid": "md4_cosine", "top_p": 0.9, "final_argmax": True}
    images = sample_run(
        trained_runs["masked"],
        requested("ancestral", 3, 3, **options),
        progress=False,
        device="cpu",
    )
    assert images.shape == (3, 8, 8, 1)
    with pytest.raises(UserError, match="nor a schedule of"):
        sample_run(trained_runs["masked"], requested("ancestral", 3, 3, grid="cosin"), device="cpu")
    with pytest.raises(UserError, match="--top-p must be in"):
        sample_run(trained_runs["masked"], requested("ancestral", 3, 3, top_p=1.5), device="cpu")
    with pytest.raises(UserError, match="ancestral sampler only"):
        sample_run(trained_runs["gaussian"], requested("ddpm", 3, 3, top_p=0.9), device="cpu")
    out = tmp_path / "md4.npz"
    argv = ["--grid", "md4_cosine", "--top-p", "0.9", "--final-argmax", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "diffobj.cli", "sample", "--run", str(trained_runs["masked"])]
        + ["--sampler", "ancestral", "--steps", "3", "--num", "2", "--no-progress", *argv],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        assert f["images"].shape == (2, 8, 8, 1)


def test_sample_command_writes_npz_and_png(trained_runs, tmp_path):
    out = tmp_path / "samples.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffobj.cli",
            "sample",
            "--run",
            str(trained_runs["masked"]),
            "--sampler",
            "ancestral",
            "--steps",
            "4",
            "--num",
            "3",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 8, 1)
    assert out.with_suffix(".png").is_file()
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffobj.cli",
            "sample",
            "--run",
            str(trained_runs["masked"]),
            "--sampler",
            "heun",
            "--steps",
            "4",
            "--num",
            "3",
            "--out",
            str(tmp_path / "x.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "not a sampler of the masked process" in wrong.stderr
    assert not (tmp_path / "x.npz").exists()


def test_a_sampling_file_is_checked_and_does_not_mix_with_the_flags(tmp_path):
    import argparse

    from diffobj.commands.sample import add_arguments, sampling_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = tmp_path / "sampling.yaml"
    fields = {"sampler": "ddim", "steps": 3, "grid": {"name": "edm"}, "options": {"eta": 0.5}}
    config.write_text(yaml.safe_dump({**fields, "num": 2, "seed": 1, "guidance": 0.0}))
    base = ["--run", "r", "--sampling", str(config), "--out", "o.npz"]
    assert sampling_config(parser.parse_args(base)) == requested(
        "ddim", 3, 2, grid="edm", seed=1, eta=0.5
    )
    with pytest.raises(UserError, match="--steps: give --sampling FILE or the sampling flags"):
        sampling_config(parser.parse_args([*base, "--steps", "4"]))
    config.write_text(yaml.safe_dump({**fields, "stpes": 3, "num": 2}))
    with pytest.raises(UserError, match="sampling.yaml: unknown key 'stpes'"):
        sampling_config(parser.parse_args(base))


def test_bad_requests_are_user_errors_and_write_nothing(tmp_path):
    with pytest.raises(UserError, match="has no model.pt"):
        sample_run(tmp_path, requested("heun", 18, 4), progress=False)
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        sample_run(tmp_path, requested("euler", 18, 4), progress=False)
    with pytest.raises(UserError, match="--steps must be positive"):
        sample_run(tmp_path, requested("ddpm", 0, 4), progress=False)
    out = tmp_path / "s.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffobj.cli",
            "sample",
            "--run",
            str(tmp_path),
            "--sampler",
            "heun",
            "--steps",
            "18",
            "--num",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "has no model.pt" in proc.stderr
    assert not out.exists() and not out.with_suffix(".png").exists()
