"""``heun`` against EDM's own ``edm_sampler`` outputs (tests/reference/edm_sampler_gaussian.pt).

EDM ran on Gaussian data N(0, 0.5^2 I) with the exact denoiser D(x^, s) = x^ 0.25 / (0.25 + s^2),
in float64. Here the same denoiser is written as an eps-predictor on a run's own path
z = alpha x^, and EDM's latents and recorded draws are fed through the noise source.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffobj.errors import UserError
from diffobj.objectives import schedules
from diffobj.sampling.samplers import Churn, edm_sigmas, heun, noise_grid

ROOT = Path(__file__).resolve().parents[1]
REF = torch.load(ROOT / "tests" / "reference" / "edm_sampler_gaussian.pt", weights_only=False)
LIBRARY = schedules.load_library(ROOT / "config" / "schedules.yaml")


def schedule(name: str, log_snr_range=(-10.0, 20.0)):  # vp_linear reaches -10.05
    return schedules.build(name, LIBRARY[name], log_snr_range)


def exact_eps(z, level):
    """eps_hat of the exact denoiser: x^ = z / alpha, s = sigma / alpha, eps = (x^ - D) / s."""
    a, s = level.alpha[:, None], level.sigma[:, None]
    x_hat, s_hat = z / a, s / a
    var = REF["sigma_data"] ** 2
    return (x_hat - x_hat * var / (var + s_hat**2)) / s_hat


def replay(draws: list[torch.Tensor]):
    """A noise source that hands out the given tensors in order, and checks none is left."""
    queue = list(draws)

    def source(shape):
        assert tuple(queue[0].shape) == tuple(shape)
        return queue.pop(0)

    return source, queue


def churn_options(p):
    return {
        "s_churn": p["S_churn"],
        "s_min": p["S_min"],
        "s_max": p["S_max"],
        "s_noise": p["S_noise"],
    }


def run_heun(run, sched, **extra):
    p = run["params"]
    draws = [REF["latents"]]
    churn = {}
    if p["S_churn"] > 0:
        churn = churn_options(p)
        draws += list(run["noise_draws"])
    source, left = replay(draws)
    out = heun(
        exact_eps,
        sched,
        noise_grid(
            sched, p["num_steps"], "edm", sigma_min=p["sigma_min"], sigma_max=p["sigma_max"]
        ),
        tuple(REF["latents"].shape),
        generator=torch.Generator(),
        **churn,
        noise=source,
        **extra,
    )
    assert not left  # every draw EDM consumed was consumed here, in order
    return out


@pytest.mark.parametrize("name", ["vp_cosine", "vp_linear", "rectified_flow"])
@pytest.mark.parametrize("index", range(len(REF["runs"])))
def test_heun_reproduces_edm_sampler(index, name):
    """Deterministic (18 and 40 steps) and stochastic (ImageNet-64 churn) runs, on three paths
    (declared alpha and sigma, log-SNR only, and a non-variance-preserving one)."""
    run = REF["runs"][index]
    torch.testing.assert_close(run_heun(run, schedule(name)), run["out"], atol=1e-6, rtol=0)


def test_sigma_range_is_independent_of_the_training_range():
    """A run trained on log-SNR [-12, 12] still samples on EDM's [0.002, 80] when asked."""
    run = REF["runs"][0]
    narrow = schedule("vp_cosine", (-12.0, 12.0))
    torch.testing.assert_close(run_heun(run, narrow), run["out"], atol=1e-6, rtol=0)
    # the default (no range) clips to the training range, and differs: sigma_min = e^{-6}
    assert float(edm_sigmas(narrow, 18)[-2]) == pytest.approx(math.exp(-6))


def test_network_evaluations_match_edm():
    for run in REF["runs"]:
        calls = []

        def counting(z, level, calls=calls):
            calls.append(1)
            return exact_eps(z, level)

        p = run["params"]
        sched = schedule("vp_cosine")
        heun(
            counting,
            sched,
            noise_grid(sched, p["num_steps"], "edm"),
            (4, 8),
            generator=torch.Generator().manual_seed(0),
            **churn_options(p),
        )
        assert len(calls) == run["nfe"]


def test_churn_raises_sigma_only_inside_its_window():
    churn = Churn(s_churn=40, s_min=0.05, s_max=50, s_noise=1.003)
    assert churn.raised(10.0, 40) == pytest.approx(10.0 * math.sqrt(2))
    assert churn.raised(60.0, 40) == 60.0 and churn.raised(0.01, 40) == 0.01
    assert Churn(s_churn=4).raised(1.0, 40) == pytest.approx(1.1)


def test_sigma_range_beyond_a_declared_path_is_a_user_error():
    """A path with declared alpha that does not reach the range cannot be sampled there."""
    entry = {"process": "gaussian", "alpha": "1 - 0.9 * t", "sigma": "0.1 + 0.9 * t"}
    short = schedules.build("short", entry, (-4.0, 4.0))  # it covers [-4.6, 4.6]
    with pytest.raises(UserError, match="sigma range needs log-SNR"):
        grid = noise_grid(short, 4, "edm", sigma_min=0.002, sigma_max=80)
        heun(exact_eps, short, grid, (2, 8), generator=torch.Generator())


def test_cli_options_become_heun_and_edm_grid_keywords():
    import argparse

    from diffobj.commands.sample import add_arguments, sampling_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--run", "r", "--sampler", "heun", "--steps", "40", "--num", "1", "--out", "o.npz"]
    plain = sampling_config(parser.parse_args(base))
    assert (plain.grid, plain.options) == ({"name": "edm"}, {})
    args = parser.parse_args(
        [*base, "--sigma-min", "0.002", "--sigma-max", "80", "--s-churn", "40", "--s-min", "0.05"]
    )
    config = sampling_config(args)
    assert config.grid == {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}
    assert config.options == {"s_churn": 40.0, "s_min": 0.05}
    with pytest.raises(UserError, match="go together"):
        noise_grid(schedule("vp_cosine"), 4, "edm", sigma_min=0.002)


def test_spec_sampling_range_must_be_ordered():
    from pydantic import ValidationError

    from diffobj.spec import Sampling

    assert (Sampling().sigma_min, Sampling().sigma_max) == (0.002, 80.0)  # EDM's defaults
    with pytest.raises(ValidationError, match="sigma_min < sigma_max"):
        Sampling(sigma_min=1.0, sigma_max=0.5)


def test_a_spec_whose_path_misses_the_sampling_range_is_refused(tmp_path):
    import yaml

    from diffobj import spec

    raw = {
        "experiment": "short_path",
        "datasets": {"digits": {"source": "sklearn_digits"}},
        "processes": {"gaussian": {"kind": "gaussian", "log_snr_range": [-4.0, 4.0]}},
        "schedules": {"short": {"process": "gaussian", "alpha": "1 - 0.9 * t", "sigma": "t"}},
        "models": {"tiny": {"channels": 8}},
        "grid": [
            {
                "dataset": "digits",
                "process": "gaussian",
                "schedule": "short",
                "weighting": "elbo",
                "model": "tiny",
            }
        ],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(spec.SpecError, match="sampling.sigma_min/sigma_max: .*needs log-SNR"):
        spec.load(path, root=ROOT)
    raw["sampling"] = {"sigma_min": 0.1, "sigma_max": 10.0}
    path.write_text(yaml.safe_dump(raw))
    spec.load(path, root=ROOT)  # inside the reach of alpha = 1 - 0.9 t, sigma = t
