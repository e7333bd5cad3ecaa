"""Likelihood bounds against closed forms: Gaussian data with its exact denoiser, uniform and
perfect masked models, and VDM's discrete decoder against quadrature."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffobj.errors import UserError
from diffobj.metrics import nll
from diffobj.objectives import schedules
from diffobj.objectives.schedules import Level

LIBRARY = schedules.load_library()


def schedule(name: str, lam_min: float, lam_max: float) -> schedules.Schedule:
    return schedules.build(name, LIBRARY[name], (lam_min, lam_max))


def optimal_eps_for_gaussian_data(mu: float, s: float):
    """E[eps | z] for x ~ N(mu, s^2) per dimension and z = alpha x + sigma eps."""

    def eps_fn(z: torch.Tensor, level: Level) -> torch.Tensor:
        lv = level.expand(z.dim())
        a, sig = lv.alpha.to(z.dtype), lv.sigma.to(z.dtype)
        return sig * (z - a * mu) / (a * a * s * s + sig * sig)

    return eps_fn


def true_gap(mu: float, s: float, dims: int, lam_min: float, lam_max: float) -> float:
    """Expected bound minus true NLL with the exact denoiser (the diffusion term is then tight):
    prior KL to N(0, 1) of the data's own z_1 marginal, and the Gaussian decoder's mismatch with
    the true posterior q(x|z_0), both per dimension, closed form."""
    a2, v_data = 1 / (1 + math.exp(-lam_min)), s * s
    m, v = math.sqrt(a2) * mu, a2 * v_data + (1 - a2)  # z_1 ~ N(m, v)
    prior = 0.5 * (v + m * m - 1 - math.log(v))
    # decoder N(x; x_hat, e^-lam) vs posterior N(., (1/s^2 + e^lam)^-1): expected KL of the two
    noise = math.exp(-lam_max)
    post = 1 / (1 / v_data + 1 / noise)
    shrink = noise / (noise + v_data)  # the posterior mean moves x_hat toward mu by this share
    spread = shrink**2 * (v_data + noise)  # E (posterior mean - x_hat)^2
    decoder = 0.5 * (post / noise + spread / noise - 1 - math.log(post / noise))
    return dims * (prior + decoder)


@pytest.mark.parametrize("sampling", ["log_snr", "schedule"])
def test_continuous_bound_approaches_the_true_nll_of_gaussian_data(sampling):
    mu, s, dims = 0.3, 0.5, 2
    generator = torch.Generator().manual_seed(0)
    x = mu + s * torch.randn(64, dims, generator=generator, dtype=torch.float64)
    true_nll = 0.5 * (((x - mu) / s) ** 2 + math.log(2 * math.pi * s * s)).sum(1)
    gaps = {}
    samples = {
        "log_snr": 1024,
        "schedule": 4096,
    }  # the lam draw needs a bisection: slower per sample
    for width in (1.0, 4.0, 12.0):
        bound = nll.gaussian_bound(
            optimal_eps_for_gaussian_data(mu, s),
            x,
            schedule("vp_cosine", -width, width),
            samples_per_image=samples[sampling],
            batch_size=1 << 16,
            data="continuous",
            time_sampling=sampling,
            generator=generator,
        )
        gap = bound.total - true_nll  # per image: the data's own variability cancels
        mean, stderr = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
        gaps[width] = (mean, stderr)
        assert abs(mean - true_gap(mu, s, dims, -width, width)) < 4 * stderr + 1e-3, (
            width,
            mean,
            stderr,
        )
    # a bound, tighter as the range widens, and tight at the end (true gap 2.5e-5 nats)
    assert gaps[1.0][0] - 4 * gaps[1.0][1] > gaps[4.0][0] + 4 * gaps[4.0][1]
    assert true_gap(mu, s, dims, -12, 12) < 1e-4 and gaps[12.0][1] < 0.1 * float(true_nll.mean())


def test_discrete_bound_of_a_single_memorised_image_is_zero():
    # with the exact denoiser of a one-point dataset the diffusion term vanishes; prior and
    # reconstruction vanish as the range widens, so -log2 P(x) -> 0 bits
    x_star = (
        torch.randint(0, 256, (1, 1, 4, 4), generator=torch.Generator().manual_seed(1)).double()
        / 127.5
        - 1
    )

    def eps_fn(z, level):
        lv = level.expand(z.dim())
        return (z - lv.alpha * x_star) / lv.sigma

    bound = nll.gaussian_bound(
        eps_fn,
        x_star.repeat(8, 1, 1, 1),
        schedule("vp_cosine", -20, 20),
        samples_per_image=4,
        generator=torch.Generator().manual_seed(0),
    )
    summary = bound.summary()
    assert summary["terms_bpd"]["diffusion"] == pytest.approx(0, abs=1e-9)
    assert 0 <= summary["bpd"] < 1e-6
    assert "no dequantization" in summary["convention"]


def test_discrete_decoder_matches_quadrature():
    # E_eps[-log softmax_k(-e^lam (v_j + e^{-lam/2} eps - v_k)^2 / 2)[j]] by Gauss-Hermite, one pixel
    lam_max, j = 9.0, 100
    grid = np.arange(256) / 127.5 - 1
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    x_hat = grid[j] + math.exp(-lam_max / 2) * nodes
    logits = -0.5 * math.exp(lam_max) * (x_hat[:, None] - grid) ** 2
    log_p = (
        logits[:, j] - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1)
    )
    expected = -(weights * log_p).sum() / weights.sum()
    x = torch.full((1, 1), grid[j], dtype=torch.float64)
    got = nll.discrete_reconstruction(x, lam_max, 200_000, torch.Generator().manual_seed(0))
    assert float(got) == pytest.approx(expected, rel=2e-2)
    assert expected > 0.01  # the decoder is not trivially exact at this noise level


def test_masked_elbo_of_a_uniform_model_is_log_256_per_dimension():
    tokens = torch.randint(0, 256, (64, 3, 4, 4), generator=torch.Generator().manual_seed(0))

    def uniform(z, level):
        return torch.zeros(z.shape[0], 256, *z.shape[1:])

    for name, sampling in [
        ("masked_linear", "schedule"),
        ("md4_cosine", "schedule"),
        ("md4_cosine", "alpha"),
        ("md4_cosine", "log_snr"),
    ]:
        bound = nll.masked_bound(
            uniform,
            tokens,
            schedule(name, -9.21, 9.21),
            samples_per_image=32,
            batch_size=2048,
            time_sampling=sampling,
            generator=torch.Generator().manual_seed(1),
        )
        bpd, stderr = bound.bits_per_dim()
        # D log 256 nats = 8 bits per dimension, in expectation over the draws
        assert abs(bpd - 8) < 4 * stderr + 1e-3, (name, sampling, bpd, stderr)
        assert stderr < 0.2


def test_masked_elbo_of_a_perfect_model_is_the_prior_alone():
    x_star = torch.randint(0, 256, (1, 1, 4, 4), generator=torch.Generator().manual_seed(2))

    def perfect(z, level):
        return 1e4 * torch.nn.functional.one_hot(x_star.expand_as(z), 256).movedim(-1, 1).float()

    lam_min = -6.0
    bound = nll.masked_bound(
        perfect,
        x_star.repeat(4, 1, 1, 1),
        schedule("masked_linear", lam_min, 6.0),
        samples_per_image=2,
        generator=torch.Generator().manual_seed(0),
    )
    bpd, _ = bound.bits_per_dim()
    assert bpd == pytest.approx(8 / (1 + math.exp(-lam_min)), rel=1e-6)  # alpha_1 log2 256


def test_an_unbounded_range_is_refused():
    unbounded = schedules.from_expressions(
        "vp_cosine", "gaussian", alpha="cos(pi * t / 2)", sigma="sin(pi * t / 2)"
    )
    with pytest.raises(UserError, match="needs a finite log-SNR range"):
        nll.gaussian_bound(lambda z, level: z, torch.zeros(2, 4), unbounded)


# -- the command, on two tiny trained runs ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A Gaussian and a masked run of the default spec, trained for 2 steps on digits."""
    import yaml

    from diffobj.cli import main
    from diffobj.data import prepare
    from diffobj.training.train import TrainOptions, train

    root = tmp_path_factory.mktemp("runs")
    prepare("sklearn_digits", root / "data")
    spec = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    runs = {}
    for kind, run_id in [
        ("gaussian", "digits-gaussian-vp_cosine-elbo-mlp-s0"),
        ("masked", "digits-masked-md4_cosine-elbo-mlp-s0"),
    ]:
        config = root / f"{kind}.yaml"
        assert main(["validate", str(spec), "--run-config", run_id, str(config)]) == 0
        raw = yaml.safe_load(config.read_text())
        raw["data"]["images"] = str(root / "data" / "images.npy")
        raw["training"].update(
            steps=2,
            warmup_steps=1,
            batch_size=8,
            checkpoint_every=1000,
            log_every=1,
            log_snr_bins=2,
        )  # eval_bins.csv: 2 levels, not 16
        config.write_text(yaml.safe_dump(raw))
        train(config, root / kind, TrainOptions(device="cpu", eval_images=8, progress=False))
        runs[kind] = root / kind
    return root, runs


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_cli_nll_of_a_trained_run(tiny_runs, kind, tmp_path):
    import json

    from diffobj.cli import main

    root, runs = tiny_runs
    out = tmp_path / "nll.json"
    assert (
        main(
            [
                "nll",
                "--run",
                str(runs[kind]),
                "--data",
                str(root / "data" / "test" / "images.npy"),
                "--out",
                str(out),
                "--samples-per-image",
                "2",
                "--max-images",
                "16",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["process"] == kind and result["n_images"] == 16 and result["dims"] == 64
    assert result["bpd"] == pytest.approx(sum(result["terms_bpd"].values()))
    assert 0 < result["bpd"] < 40 and result["stderr"] > 0
    assert "bits/dim = -log2 P(x) / D" in result["convention"]


def test_cli_nll_refuses_images_of_another_shape(tiny_runs, tmp_path, capsys):
    from diffobj.cli import main

    _, runs = tiny_runs
    np.save(tmp_path / "big.npy", np.zeros((4, 16, 16, 1), np.uint8))
    out = tmp_path / "nll.json"
    assert (
        main(
            [
                "nll",
                "--run",
                str(runs["gaussian"]),
                "--data",
                str(tmp_path / "big.npy"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "images are (16, 16, 1) (H, W, C) but run" in capsys.readouterr().err
    assert (
        main(
            [
                "nll",
                "--run",
                str(tmp_path),
                "--data",
                str(tmp_path / "big.npy"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "has no model.pt" in capsys.readouterr().err
    assert not out.exists()
