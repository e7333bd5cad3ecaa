"""Scaling: the ELBO integral per process (closed forms) and per-level power-law fits."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from diffobj.scaling import elbo_integral, per_level_fits, power_law_fit


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
    assert fits.height == 4
    clean = fits.filter(pl.col("fit") == "minus_optimal").sort("log_snr")
    assert clean["b"].to_list() == pytest.approx([0.3, 0.6])
    raw = fits.filter(pl.col("fit") == "raw").sort("log_snr")
    assert (raw["r2"] < clean["r2"]).all()
