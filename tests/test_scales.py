"""The unified VE / x0 scale against closed forms on Gaussian data.

For x ~ N(0, s² I), z = alpha x + sigma eps, the optimal predictors are linear and, with
σ̂² = sigma²/alpha² = e^(-lam), the minimum errors per dimension are
    eps-MSE* = s² / (s² + σ̂²),    x0-MSE* = s² σ̂² / (s² + σ̂²).
A denoiser that outputs the optimal eps / x0 / v / F goes through the project's conversion to
eps_hat; its measured eps-MSE must be the first, and ``scales.eps_to_x0`` of it the second, for
every prediction type and schedule.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from diffobj import scales, schedules
from diffobj.densities import evaluate_error
from diffobj.gather import with_x0_scale
from diffobj.processes.gaussian import Denoiser

S = 0.7  # data standard deviation
SIGMA_DATA = 0.5  # the Denoiser's EDM preconditioning constant (deliberately not S)
SCHEDULES = {
    "vp_cosine": {"process": "gaussian", "log_snr": "-2*log(tan(pi*t/2))"},
    "rectified_flow": {"process": "gaussian", "alpha": "1 - t", "sigma": "t"},
}


def optimal_net(prediction: str, a: float, s: float):
    """net(z c_in, lam) returning the optimal target of ``prediction`` at one level."""
    c_in = 1 / math.sqrt(a * a * SIGMA_DATA**2 + s * s)
    denom = a * a * S * S + s * s

    def net(z_in: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        z = z_in / c_in
        x0, eps = a * S * S * z / denom, s * z / denom
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "v":
            return a * eps - s * x0
        s_hat = s / a
        c_skip = SIGMA_DATA**2 / (s_hat**2 + SIGMA_DATA**2)
        c_out = s_hat * SIGMA_DATA / math.sqrt(s_hat**2 + SIGMA_DATA**2)
        return (x0 - c_skip * z / a) / c_out

    return net


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "F"])
def test_optimal_losses_in_both_scales_match_the_closed_form(schedule_name, prediction):
    sched = schedules.build(schedule_name, SCHEDULES[schedule_name], (-10.0, 10.0))
    g = torch.Generator().manual_seed(0)
    for lam in (-3.0, 0.0, 3.0):
        level = sched.level(sched.t_of_log_snr(torch.full((8192,), lam, dtype=torch.float64)))
        a, s = float(level.alpha[0]), float(level.sigma[0])
        x = S * torch.randn(8192, 16, generator=g, dtype=torch.float64)
        model = Denoiser(lambda z, lam_: z, prediction, SIGMA_DATA)
        model.net = optimal_net(prediction, a, s)
        error = evaluate_error("gaussian", model, x, level, g)
        s_hat2 = math.exp(-lam)
        eps_star, x0_star = S**2 / (S**2 + s_hat2), S**2 * s_hat2 / (S**2 + s_hat2)
        sem = float(error.std()) / math.sqrt(len(error))
        assert abs(float(error.mean()) - eps_star) < 5 * sem
        x0 = scales.eps_to_x0(error.numpy(), lam)
        assert abs(x0.mean() - x0_star) < 5 * sem * s_hat2
        assert scales.sigma_ve(lam) == pytest.approx(s / a)


def test_the_gap_table_carries_the_x0_scale_for_gaussian_runs_only():
    frame = pl.DataFrame(
        {
            "kind": ["gaussian", "gaussian", "masked"],
            "log_snr": [-2.0, 4.0, 0.0],
            "model_loss": [0.5, 0.2, 1.0],
            "optimal_loss": [0.4, 0.0, 0.9],
        }
    ).with_columns((pl.col("model_loss") - pl.col("optimal_loss")).alias("gap"))
    out = with_x0_scale(frame)
    assert out["sigma_ve"].to_list()[:2] == pytest.approx([math.e, math.exp(-2)])
    assert out["model_loss_x0"].to_list()[:2] == pytest.approx([0.5 * math.e**2, 0.2 * math.e**-4])
    assert out["gap_x0"].to_list()[:2] == pytest.approx([0.1 * math.e**2, 0.2 * math.e**-4])
    assert out.filter(pl.col("kind") == "masked")["gap_x0"].is_null().all()


def test_the_gap_figure_draws_either_scale():
    from diffobj import figures

    lam = np.linspace(-6, 6, 5)
    rows = {
        "run_id": ["r"] * 5,
        "kind": ["gaussian"] * 5,
        "schedule": ["vp"] * 5,
        "weighting": ["elbo"] * 5,
        "log_snr": lam,
        "model_loss": np.full(5, 0.3),
        "model_stderr": np.full(5, 0.01),
        "optimal_loss": np.full(5, 0.1),
    }
    table = with_x0_scale(
        pl.DataFrame(rows).with_columns(
            (pl.col("model_loss") - pl.col("optimal_loss")).alias("gap")
        )
    )
    fig = figures.gap(table, scale="x0")
    bottom = fig.axes[1]
    assert bottom.get_xscale() == "log" and "σ̂" in bottom.get_xlabel()
    assert "x0-MSE" in fig.axes[0].get_ylabel()
    assert "log-SNR" in figures.gap(table).axes[1].get_xlabel()
    with pytest.raises(ValueError, match="scale must be"):
        figures.gap(table, scale="v")


def test_optimal_loss_interpolates_in_the_x0_scale_for_gaussian():
    # closed form of N(0, s^2) data: J*_eps = s^2 / (s^2 + e^-lam), J*_x0 = e^-lam J*_eps.
    # On a coarse table (levels 5 apart, as the digits table at high noise) the x0 values
    # interpolated from the eps table stay within 15% of the truth; plain eps interpolation
    # is off by a factor of several in x0 (the negative x0 gaps it produced on digits).
    def j_eps(lam):
        return S**2 / (S**2 + np.exp(-lam))

    table = np.array([-10.0, -5.0, 0.0, 5.0])
    fine = np.linspace(-9.5, -0.5, 19)
    truth_x0 = scales.eps_to_x0(j_eps(fine), fine)
    ours = scales.eps_to_x0(scales.interpolate_optimal(fine, table, j_eps(table), "gaussian"), fine)
    naive = scales.eps_to_x0(np.interp(fine, table, j_eps(table)), fine)
    assert np.abs(ours / truth_x0 - 1).max() < 0.15
    assert np.abs(naive / truth_x0 - 1).max() > 3
    masked = scales.interpolate_optimal(
        np.array([0.5]), np.array([0.0, 1.0]), np.array([1, 3]), "masked"
    )
    assert masked.tolist() == [2.0]
