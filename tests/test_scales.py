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

from diffobj.analysis.gather import with_x0_scale
from diffobj.objectives import scales, schedules
from diffobj.objectives.densities import evaluate_error
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
    from diffobj.analysis import figures

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


def j_eps(lam):
    """Optimal eps-MSE per dimension of N(0, S^2) data."""
    return S**2 / (S**2 + np.exp(-lam))


# an optimal-loss table's levels: an even grid in t of the VP cosine schedule on [-10, 10]
T_ENDS = 2 * np.arctan(np.exp(-5)) / np.pi, 2 * np.arctan(np.exp(5)) / np.pi
TABLE_LAM = -2 * np.log(np.tan(np.pi * np.linspace(*T_ENDS, 12) / 2))


def test_optimal_loss_interpolation_is_accurate_in_both_scales():
    # J*_eps grows like e^lam at high noise and the table's levels are sparse at the ends:
    # geometric interpolation stays within 3% of the closed form in the x0 scale, plain
    # linear interpolation of the eps values is off by a factor of ~28 (the negative x0 gaps
    # it produced on digits)
    fine = np.linspace(-9.9, 9.9, 400)
    truth_x0 = scales.eps_to_x0(j_eps(fine), fine)
    ours = scales.interpolate_optimal(fine, TABLE_LAM, j_eps(TABLE_LAM), "gaussian")
    naive = np.interp(fine, TABLE_LAM[::-1], j_eps(TABLE_LAM)[::-1])
    assert np.abs(scales.eps_to_x0(ours, fine) / truth_x0 - 1).max() < 0.03
    assert np.abs(ours / j_eps(fine) - 1).max() < 0.03  # the same in the eps scale
    assert np.abs(scales.eps_to_x0(naive, fine) / truth_x0 - 1).max() > 10
    masked = scales.interpolate_optimal(
        np.array([0.5]), np.array([0.0, 1.0]), np.array([1, 3]), "masked"
    )
    assert masked.tolist() == [2.0]


def test_gather_gap_writes_both_scales_and_validates(tmp_path):
    from diffobj.analysis import gather, tables

    lam_bins = np.linspace(-9, 9, 7)
    for run in ("g", "m"):
        d = tmp_path / "runs" / run
        d.mkdir(parents=True)
        rows = "".join(f"{v},{0.5 + 0.01 * i},0.01,128\n" for i, v in enumerate(lam_bins))
        (d / "eval_bins.csv").write_text("log_snr,error,stderr,n\n" + rows)
    runs = pl.DataFrame(
        {
            "run_id": ["g", "m"],
            "dataset": ["d", "d"],
            "kind": ["gaussian", "masked"],
            "schedule": ["s", "s"],
            "weighting": ["w", "w"],
        }
    )
    masked_lam = np.array([-10.0, -5.0, 0.0, 5.0, 10.0])
    optimal = pl.DataFrame(
        {
            "dataset": ["d"] * 17,
            "process": ["gaussian"] * 12 + ["masked"] * 5,
            "log_snr": np.concatenate([TABLE_LAM, masked_lam]),
            "optimal_loss": np.concatenate([j_eps(TABLE_LAM), np.linspace(1.0, 0.0, 5)]),
        }
    )
    gap = tables.validate("gap", gather.gap(None, tmp_path, runs, optimal))
    g = gap.filter(pl.col("run_id") == "g").sort("log_snr")
    truth_x0 = S**2 * np.exp(-lam_bins) / (S**2 + np.exp(-lam_bins))
    assert np.abs(g["optimal_loss_x0"].to_numpy() / truth_x0 - 1).max() < 0.03
    assert g["gap_x0"].to_numpy() == pytest.approx(
        g["model_loss_x0"].to_numpy() - g["optimal_loss_x0"].to_numpy()
    )
    m = gap.filter(pl.col("run_id") == "m")
    assert m["gap_x0"].is_null().all() and m["optimal_loss"].to_list()[3] == pytest.approx(0.5)
