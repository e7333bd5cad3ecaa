"""Scaling: the ELBO integral per process (closed forms) and per-level power-law fits."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from diffobj.analysis.scaling import elbo_integral, per_level_fits, power_law_fit


def test_masked_elbo_of_iid_tokens_is_their_entropy():
    # i.i.d. tokens of entropy H nats: E[CE | lam] per dim = (1 - alpha) H, alpha = sigmoid(lam),
    # so ∫ sigmoid(lam) (1 - sigmoid(lam)) H dlam = H (sigmoid(9.21) - sigmoid(-9.21)) ≈ H
    p = np.array([0.5, 0.25, 0.125, 0.125])
    entropy = float(-(p * np.log(p)).sum())
    lam = np.linspace(-9.21, 9.21, 401)
    loss = (1 - 1 / (1 + np.exp(-lam))) * entropy
    sig = 1 / (1 + math.exp(-9.21))
    expected = entropy * (2 * sig - 1)
    assert elbo_integral("masked", lam, loss) == pytest.approx(expected, rel=1e-4)
    # the old Gaussian-style 0.5 ∫ loss dlam: 4.6x the truth (issue 11)
    assert 0.5 * np.trapezoid(loss, lam) / expected == pytest.approx(4.6, abs=0.05)


def test_gaussian_elbo_is_half_the_integral_of_the_eps_loss():
    # eps-MSE of the optimal denoiser of N(0, s^2) data: s^2 / (s^2 + e^-lam); its ELBO term
    # is 1/2 ∫ dlam = 1/2 [log(s^2 e^lam + 1)] between the ends
    s2, lam = 0.49, np.linspace(-10, 10, 2001)
    loss = s2 / (s2 + np.exp(-lam))
    expected = 0.5 * (math.log(s2 * math.exp(10) + 1) - math.log(s2 * math.exp(-10) + 1))
    assert elbo_integral("gaussian", lam[::-1], loss[::-1]) == pytest.approx(expected, rel=1e-5)


def test_subtracting_the_optimal_loss_recovers_the_exponent():
    size = np.geomspace(1e4, 1e6, 5)
    loss = 0.3 + 2.0 * size**-0.4
    clean = power_law_fit(size, loss, offset=0.3)
    raw = power_law_fit(size, loss)
    assert clean["b"] == pytest.approx(0.4) and clean["r2"] == pytest.approx(1.0)
    assert clean["pearson_r"] == pytest.approx(-1.0)
    assert raw["b"] < 0.2 and raw["r2"] < clean["r2"]


def test_models_all_of_one_size_have_no_exponent_and_the_figure_says_why():
    from diffobj.commands.figures import check_sizes
    from diffobj.errors import UserError

    fit = power_law_fit(np.full(4, 1000.0), np.array([0.5, 0.4, 0.45, 0.42]))
    assert math.isnan(fit["b"]) and fit["n"] == 4
    with pytest.raises(UserError, match=r"spec.yaml: figures: scaling .* has 1000 parameters"):
        check_sizes(pl.DataFrame({"n_params": [1000, 1000, 1000]}), "spec.yaml")
    check_sizes(pl.DataFrame({"n_params": [1000, 2000]}), "spec.yaml")


def test_the_95_percent_interval_on_b_covers_it_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    size = np.geomspace(1e4, 1e6, 6)
    hits = 0
    for _ in range(400):
        loss = 0.1 + size**-0.5 * np.exp(rng.normal(0, 0.05, 6))  # log-normal scatter
        fit = power_law_fit(size, loss, offset=0.1)
        hits += fit["b_lo"] <= 0.5 <= fit["b_hi"]
    assert 0.91 <= hits / 400 <= 0.99


def test_per_level_fits_one_row_per_level_and_fit():
    size = np.geomspace(1e4, 1e6, 4)
    rows = []
    for lam, optimum, b in ((-2.0, 0.2, 0.3), (2.0, 0.01, 0.6)):
        for f in size:
            rows.append(
                {
                    "kind": "gaussian",
                    "log_snr": lam,
                    "size": f,
                    "optimal_loss": optimum,
                    "model_loss": optimum + f**-b,
                }
            )
    fits = per_level_fits(pl.DataFrame(rows))
    assert fits.height == 4 and (fits["against"] == "size").all()
    clean = fits.filter(pl.col("fit") == "minus_optimal").sort("log_snr")
    assert clean["b"].to_list() == pytest.approx([0.3, 0.6])
    raw = fits.filter(pl.col("fit") == "raw").sort("log_snr")
    assert (raw["r2"] < clean["r2"]).all()


def test_forward_flops_of_a_convolution_and_training_compute():
    from torch import nn

    from diffobj.analysis.scaling import forward_flops, training_flops

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)

        def forward(self, x, log_snr):
            return self.conv(x)

    # 2 flops per multiply-add: 2 · (C_in k²) · C_out · H · W
    flops = forward_flops(Net(), "gaussian", (1, 8, 8))
    assert flops == 2 * 9 * 4 * 64
    assert training_flops(flops, 1000) == 3 * flops * 1000


def test_the_real_model_is_built_channels_first():
    from diffobj.analysis.scaling import forward_flops
    from diffobj.models import build_model

    model = build_model(
        {"channels": 8, "channel_mult": [1, 2], "num_blocks": 1}, "gaussian", (1, 8, 8)
    )
    assert forward_flops(model, "gaussian", (1, 8, 8)) > 0


def test_the_scaling_figure_command_writes_per_level_fits(tmp_path):
    """`diffobj figures --figure scaling` on the scaling spec: models built channels first from
    the NHWC data, fits against parameters and training compute written beside the figure."""
    import argparse
    from pathlib import Path

    from diffobj import shared_paths, spec
    from diffobj.analysis import tables
    from diffobj.analysis.gather import with_x0_scale
    from diffobj.commands import figures as command

    root = Path(__file__).resolve().parents[1]
    spec_path = root / "config" / "experiments" / "scaling_digits.yaml"
    loaded = spec.load(spec_path, root=root)
    results = tmp_path / "results" / loaded.experiment
    images = shared_paths.data_file(loaded, "digits", shared_paths.IMAGES, tmp_path / "results")
    images.parent.mkdir(parents=True)
    np.save(images, np.zeros((4, 8, 8, 1), np.uint8))
    width = {"w32": 32, "w64": 64, "w128": 128, "w256": 256}
    rows = [
        {
            "run_id": r.id,
            "kind": "gaussian",
            "schedule": r.schedule,
            "weighting": r.weighting,
            "log_snr": lam,
            "model_loss": 0.1 + width[r.model] ** -0.5 + 0.001 * r.seed,
            "model_stderr": 0.001,
            "optimal_loss": 0.1,
        }
        for r in loaded.runs
        for lam in (-2.0, 2.0)
    ]
    gap = pl.DataFrame(rows).with_columns(
        (pl.col("model_loss") - pl.col("optimal_loss")).alias("gap")
    )
    (results / "tables").mkdir(parents=True)
    tables.write("gap", with_x0_scale(gap), results / "tables" / "gap.parquet")
    out = tmp_path / "scaling.png"
    command.run(
        argparse.Namespace(
            spec=str(spec_path), results=str(results), figure="scaling", out=str(out)
        )
    )
    assert out.exists()
    fits = pl.read_csv(tmp_path / "scaling_per_level.csv")
    assert sorted(set(fits["against"])) == ["n_params", "train_flops"]
    assert fits.height == 2 * 2 * 2  # levels x fits x sizes
    clean = fits.filter(pl.col("fit") == "minus_optimal")
    assert (clean["b"] > 0).all() and (clean["pearson_r"] < -0.9).all()


def test_the_scaling_figure_draws_each_levels_exponent_raw_and_minus_optimal():
    # J_lam(F) = 0.1 + F^(-b_lam) with b = 0.3 at lam = -2 and 0.6 at lam = 2: the J*-subtracted
    # panel shows exactly those exponents and |rho| = 1; the raw fit bends, so its b is smaller
    from diffobj.analysis import figures

    size = np.geomspace(1e3, 1e6, 4)
    exponents = {-2.0: 0.3, 2.0: 0.6}
    levels = pl.DataFrame(
        [
            {"kind": "gaussian", "log_snr": lam, "n_params": f, "optimal_loss": 0.1}
            | {"model_loss": 0.1 + f**-b}
            for lam, b in exponents.items()
            for f in size
        ]
    )
    points = pl.DataFrame(
        {"kind": "gaussian", "n_params": size, "loss": 0.2 + size**-0.5, "optimal_loss": 0.2}
    )
    fig = figures.scaling(points, per_level_fits(levels, "n_params"))
    b_ax, r_ax = fig.axes[2], fig.axes[3]
    drawn = {c.get_label(): c.lines[0].get_ydata() for c in b_ax.containers}
    assert np.allclose(drawn["J − J*"], [0.3, 0.6])
    assert (drawn["raw J"] < drawn["J − J*"]).all()
    rho = {line.get_label(): line.get_ydata() for line in r_ax.get_lines()}
    assert np.allclose(rho["J − J*"], 1.0)
