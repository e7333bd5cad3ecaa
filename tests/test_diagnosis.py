"""Gap versus quality per level: correlations against their definitions on constructed runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from diffobj.analysis.diagnosis import correlation, gap_quality

ROOT = Path(__file__).resolve().parents[1]


def test_correlation_matches_its_definition_and_fisher_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    out = correlation(x, y)
    xc, yc = x - x.mean(), y - y.mean()
    r = (xc * yc).sum() / math.sqrt((xc**2).sum() * (yc**2).sum())
    assert out["pearson_r"] == pytest.approx(r)
    half = 1.959964 / math.sqrt(12 - 3)
    assert out["r_lo"] == pytest.approx(math.tanh(math.atanh(r) - half), rel=1e-5)
    assert out["r_hi"] == pytest.approx(math.tanh(math.atanh(r) + half), rel=1e-5)
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731 - no ties here
    assert out["spearman_rho"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_per_level_sign_follows_the_construction():
    # 6 runs; FD rises with the gap at lam = 0, falls with it at lam = 4, is unrelated at -4
    fd = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    rows = []
    for i, f in enumerate(fd):
        gaps = {0.0: 0.1 * f, 4.0: 1.0 - 0.1 * f, -4.0: [0.3, 0.1, 0.2, 0.2, 0.1, 0.3][i]}
        for lam, g in gaps.items():
            rows.append({"run_id": f"r{i}", "kind": "gaussian", "log_snr": lam, "gap": g})
    evaluation = pl.DataFrame({"run_id": [f"r{i}" for i in range(6)], "fd_classifier": fd})
    out = gap_quality(pl.DataFrame(rows), evaluation)
    r = dict(zip(out["log_snr"].to_list(), out["pearson_r"].to_list(), strict=True))
    assert r[0.0] == pytest.approx(1.0) and r[4.0] == pytest.approx(-1.0)
    assert abs(r[-4.0]) < 0.5
    assert (out["n"] == 6).all()


def test_too_few_runs_give_no_correlation():
    assert math.isnan(correlation([1.0, 2.0], [2.0, 1.0])["pearson_r"])


def test_the_figure_draws_one_panel_per_kind():
    from diffobj.analysis import figures

    frame = pl.DataFrame(
        {
            "kind": ["gaussian"] * 3,
            "log_snr": [-2.0, 0.0, 2.0],
            "metric": ["fd_classifier"] * 3,
            "pearson_r": [0.1, 0.5, -0.4],
            "r_lo": [-0.5, 0.0, -0.8],
            "r_hi": [0.6, 0.8, 0.2],
            "spearman_rho": [0.0, 0.4, -0.3],
            "n": [6, 6, 6],
        }
    )
    fig = figures.gap_quality(frame)
    assert len(fig.axes) == 1 and "across 6 runs" in fig.axes[0].get_title()


def test_figures_command_draws_gap_quality_and_gap_x0_from_the_tables(tmp_path):
    """The `diffobj figures` path: validated tables in, figure + per-level CSV out."""
    import argparse

    from diffobj.analysis import tables
    from diffobj.analysis.gather import with_x0_scale
    from diffobj.commands import figures as command

    lam = [-2.0, 0.0, 2.0]
    runs = [f"r{i}" for i in range(5)]
    gap = pl.DataFrame(
        {
            "run_id": [r for r in runs for _ in lam],
            "kind": "gaussian",
            "schedule": "vp_cosine",
            "weighting": "elbo",
            "log_snr": lam * 5,
            "model_loss": [0.2 + 0.01 * i + 0.1 * k for i in range(5) for k in range(3)],
            "model_stderr": 0.01,
            "optimal_loss": [0.1 * k + 0.05 for _ in runs for k in range(3)],
        }
    ).with_columns((pl.col("model_loss") - pl.col("optimal_loss")).alias("gap"))
    evaluation = pl.DataFrame(
        {
            "run_id": runs,
            "process": "gaussian",
            "kind": "gaussian",
            "schedule": "vp_cosine",
            "weighting": "elbo",
            "model": "tiny",
            "seed": [0, 1, 2, 3, 4],
            "monotonic": True,
            "fd_classifier": [1.0, 2.0, 3.0, 5.0, 4.0],
            "fd_classifier_lo": [0.9, 1.8, 2.7, 4.5, 3.6],
            "fd_classifier_hi": [1.1, 2.2, 3.3, 5.5, 4.4],
            "fid": pl.Series([None] * 5, dtype=pl.Float64),
            "nll_bpd": 1.0,
            "nll_stderr": 0.1,
        }
    )
    (tmp_path / "tables").mkdir()
    tables.write("gap", with_x0_scale(gap), tmp_path / "tables" / "gap.parquet")
    tables.write("evaluation", evaluation, tmp_path / "tables" / "evaluation.parquet")
    for name in ("gap_quality", "gap_x0"):
        out = tmp_path / f"{name}.png"
        args = argparse.Namespace(
            spec=str(ROOT / "config" / "config.yaml"),
            results=str(tmp_path),
            figure=name,
            out=str(out),
        )
        command.run(args)
        assert out.exists()
    rows = pl.read_csv(tmp_path / "gap_quality.csv")
    assert rows["metric"].to_list() == ["fd_classifier"] * 3 and (rows["n"] == 5).all()
    assert rows["pearson_r"].to_list()[0] == pytest.approx(0.9, abs=0.01)
