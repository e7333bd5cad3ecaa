"""The cascade of improved bounds: closed forms on tiny data, and the cumulative-weight identity.

A model that IS the optimal denoiser of a tiny training set has every bound L^(i) equal to the
entropy of the empirical distribution, log N / D (up to the prior's tiny KL): its reverse process
is exact, so the optimal decoder gains nothing at any cut. A model worse by a known amount loses
exactly that amount above each cut.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from diffobj.objectives import bounds, schedules

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
ROOT = Path(__file__).resolve().parents[1]
LIBRARY = schedules.load_library(ROOT / "config" / "schedules.yaml")


def schedule(name: str, lam_range: tuple[float, float]) -> schedules.Schedule:
    return schedules.build(name, LIBRARY[name], lam_range)


# -- tiny data and their exact denoisers, written here from the definitions --------------------

POINTS = torch.tensor(
    [[-1.0, -1.0, 1.0, 0.5], [1.0, 0.0, -1.0, 1.0], [0.0, 1.0, 0.5, -1.0], [0.5, -0.5, -0.5, 0.0]],
    dtype=torch.float64,
).view(4, 1, 2, 2)  # N = 4 "images" of D = 4 pixels
TOKENS = torch.tensor([[3, 7, 7, 1], [3, 2, 5, 1], [9, 7, 5, 0], [3, 7, 5, 1], [4, 4, 4, 4]]).view(
    5, 1, 2, 2
)


def optimal_eps(offset: float = 0.0):
    """eps*(z) = (z - alpha E[x | z]) / sigma, E[x|z] = Σ softmax(-||z - alpha x_n||² / 2σ²) x_n."""
    flat = POINTS.flatten(1)

    def eps_fn(z, level):
        a = level.alpha.view(-1, 1).double()
        s = level.sigma.view(-1, 1).double()
        zf = z.flatten(1).double()
        sq = ((zf[:, None, :] - a[:, None] * flat[None]) ** 2).sum(-1)
        post = torch.softmax(-sq / (2 * s**2), dim=1)
        x_mean = post @ flat
        return ((zf - a * x_mean) / s + offset).view(z.shape)

    return eps_fn


def optimal_logits(z, level):
    """log of the value counts over the consistent set (items equal to z on its kept tokens)."""
    flat, zf = TOKENS.flatten(1), z.flatten(1)
    kept = zf != 256
    agree = ((flat[None] == zf[:, None]) | ~kept[:, None]).all(-1)  # (B, N)
    onehot = torch.nn.functional.one_hot(flat, 256).double()  # (N, D, V)
    counts = torch.einsum("bn,ndv->bvd", agree.double(), onehot)
    return counts.clamp_min(1e-300).log().view(z.shape[0], 256, *z.shape[1:])


def test_optimal_gaussian_denoiser_makes_every_bound_the_data_entropy():
    sched = schedule("vp_cosine", (-10.0, 10.0))
    result, _, _ = bounds.cascade(
        "gaussian",
        optimal_eps(),
        sched,
        POINTS,
        cuts=6,
        per_cut=6,
        images=4000,
        queries=2000,
        batch_size=4000,
    )
    target = math.log(4) / 4  # nats per dimension
    assert result.prior < 1e-4
    assert result.decoder[-1] == pytest.approx(target, abs=2e-4)  # lam_min: posterior ~ uniform
    assert result.decoder[0] < 1e-6  # lam_max: the posterior is a point mass on the source
    np.testing.assert_allclose(result.bound, target, atol=0.015)  # ~3 standard errors
    assert result.bound_stderr.max() < 0.005


def test_a_worse_gaussian_model_loses_exactly_its_excess_error_above_each_cut():
    """eps_hat = eps* + c has error e* + c² exactly (E[eps - eps* | z] = 0), so
    L^(i) - L^(T) = ½ c² (lam_i - lam_min): the bounds tighten as the cut moves to noise."""
    sched = schedule("vp_cosine", (-10.0, 10.0))
    c = 0.5
    good, _, _ = bounds.cascade(
        "gaussian", optimal_eps(), sched, POINTS, cuts=4, per_cut=6, images=1000, queries=1000
    )
    bad, _, _ = bounds.cascade(
        "gaussian", optimal_eps(c), sched, POINTS, cuts=4, per_cut=6, images=1000, queries=1000
    )
    excess = 0.5 * c**2 * (bad.log_snr - (-10.0))
    np.testing.assert_allclose(bad.bound - good.bound, excess, rtol=2e-3, atol=1e-9)
    assert (bad.bound[:-1] > bad.bound[1:]).all()


def test_optimal_masked_denoiser_makes_every_bound_the_data_entropy():
    sched = schedule("md4_cosine", (-9.21, 9.21))
    result, _, _ = bounds.cascade(
        "masked", optimal_logits, sched, TOKENS, cuts=4, per_cut=6, images=1500, queries=1500
    )
    target = math.log(5) / 4
    assert result.decoder[-1] == pytest.approx(target, abs=1e-3)
    assert result.decoder[0] < 1e-3
    np.testing.assert_allclose(result.bound, target + result.prior, atol=0.01)


def test_a_uniform_masked_model_gives_bounds_that_tighten_towards_noise():
    sched = schedule("md4_cosine", (-9.21, 9.21))

    def uniform(z, level):
        return torch.zeros(z.shape[0], 256, *z.shape[1:], dtype=torch.float64)

    result, _, _ = bounds.cascade(
        "masked", uniform, sched, TOKENS, cuts=4, per_cut=6, images=1000, queries=1000
    )
    assert (result.bound[:-1] > result.bound[1:]).all()
    # the ELBO end of a uniform model: the masked ELBO of log 256 per token, ∫ sigmoid(l) (1 -
    # alpha(l)) log 256 dl = log 256 · ∫ sigmoid(l) sigmoid(-l) dl over [-9.21, 9.21]
    elbo = math.log(256) * quad(lambda l: 1 / (4 * math.cosh(l / 2) ** 2), -9.21, 9.21)[0]
    assert result.bound[0] == pytest.approx(
        elbo + result.prior, abs=4 * float(result.bound_stderr[0])
    )


# -- the cumulative-weight identity, by numerical integration ------------------------------------


def error_curve(lam):  # any smooth error curve will do
    return 0.3 + 1 / (1 + np.exp(lam - 1)) + 0.1 * np.sin(lam)


def identity_gap(kind: str, w, cuts: int, per_cut: int = 2) -> tuple[float, object]:
    """Σ w_i L^(i) - constant - ∫ w g e dlam, relative, on ``cuts`` cuts over [-10, 10]."""
    lam = torch.linspace(10.0, -10.0, cuts * per_cut + 1, dtype=torch.float64)
    e = torch.from_numpy(error_curve(lam.numpy()))
    m, _ = bounds.model_terms(kind, lam, e, torch.zeros_like(e))
    at_cuts = slice(None, None, per_cut)
    decoder = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, cuts + 1))  # any constants
    result = bounds.Cascade(
        lam[at_cuts] * 0, lam[at_cuts], m[at_cuts], decoder * 0, decoder, decoder * 0, prior=0.25
    )
    w_lam = torch.from_numpy(w(lam.numpy()))
    identity = bounds.weighted_identity(result, kind, lam, e, w_lam, per_cut)
    g = (lambda l: 0.5) if kind == "gaussian" else (lambda l: 1 / (1 + math.exp(-l)))
    exact = quad(lambda l: w(l) * g(l) * error_curve(l), -10, 10, limit=200)[0]
    assert identity.reweighted_loss == pytest.approx(exact, rel=1e-3)  # the trapezoid itself
    assert identity.constant == pytest.approx(
        float((identity.cut_weights * (0.25 + decoder)).sum())
    )
    # Σ_i w_i is the mean of w over the noisiest interval
    width = 20 / cuts
    last = quad(w, -10, -10 + width)[0] / width
    assert float(identity.cut_weights.sum()) == pytest.approx(last, rel=1e-3)  # its trapezoid
    return (identity.weighted_bound_sum - identity.constant) / exact - 1, identity


@pytest.mark.parametrize(
    ("kind", "w", "monotone"),
    [
        ("gaussian", lambda lam: 1 / (1 + np.exp(lam - 2)), True),  # sigmoid(-lam + 2)
        ("masked", lambda lam: np.exp(-lam / 2), True),  # FM
        ("gaussian", lambda lam: 1 / np.cosh(lam / 2), False),  # IDDPM
    ],
)
def test_weighted_sum_of_bounds_is_the_reweighted_loss_up_to_a_constant(kind, w, monotone):
    """Σ w_i L^(i) - const = Σ_j w̄_j ∫_j g e (w̄_j: w's mean between two cuts): it converges to
    the reweighted loss at second order in the cut spacing."""
    coarse, _ = identity_gap(kind, w, 100)
    fine, identity = identity_gap(kind, w, 200)
    assert abs(fine) < 1e-3
    assert coarse / fine == pytest.approx(4, rel=0.15)  # second order
    assert identity.monotone is monotone
    assert bool((identity.cut_weights >= 0).all()) is monotone  # w_i >= 0 iff w is monotone


# -- the command and the table ---------------------------------------------------------------


def test_bounds_command_on_a_trained_run(tmp_path):
    """A real (briefly trained) run: the noisiest bound is the prior plus the entropy of the
    training set, log N / D, and the ELBO end is the largest bound."""
    import csv

    from test_train import run_config  # the embedded default, on a few digits

    from diffobj.cli import main
    from diffobj.training.train import TrainOptions, train

    cfg = run_config(tmp_path, "masked", "simple", images=32)
    train(cfg, tmp_path / "run", TrainOptions(device="cpu", progress=False, eval_images=8))
    data = tmp_path / "data" / "images.npy"
    out = tmp_path / "bounds.csv"
    argv = ["bounds", "--run", str(tmp_path / "run"), "--data", str(data), "--out", str(out)]
    small = ["--cuts", "4", "--images", "16", "--queries", "64", "--device", "cpu"]
    assert main([*argv, *small]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["i"]) for r in rows] == [0, 1, 2, 3, 4]
    assert list(rows[0]) == list(bounds.COLUMNS)
    last, first = rows[-1], rows[0]
    # at lam_min a token survives with probability 1e-4: 0.6% of queries keep one of 64 tokens
    assert float(last["decoder_term"]) == pytest.approx(math.log(32) / 64, rel=2e-2)
    assert float(last["decoder_term"]) <= math.log(32) / 64
    assert float(first["bound"]) == max(float(r["bound"]) for r in rows)
    assert main([*argv[:-1], str(tmp_path / "b.txt"), *small]) == 2  # not a .csv
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 4, 4, 1), np.uint8))
    assert main([*argv[:3], "--data", str(wrong), "--out", str(out), *small]) == 2


def test_bounds_table_gathers_validates_and_draws(tmp_path, monkeypatch):
    import polars as pl
    import yaml

    from diffobj import io, spec
    from diffobj.analysis import tables
    from diffobj.cli import main

    raw = yaml.safe_load((ROOT / "config" / "experiments" / "conditional_digits.yaml").read_text())
    raw["grid"] = [
        {"dataset": "digits", "process": p, "schedule": s, "weighting": w, "model": "tiny_cond"}
        for p, s, w in [("gaussian", "vp_cosine", "iddpm"), ("masked", "md4_cosine", "simple")]
    ]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    loaded = spec.load(spec_path, root=ROOT)
    data = {"gaussian": (POINTS, optimal_eps()), "masked": (TOKENS, optimal_logits)}
    for run in loaded.runs:
        kind = loaded.spec.processes[run.process].kind
        sched = loaded.schedule(run.schedule, run.process)
        x, model = data[kind]
        result, fine, error = bounds.cascade(
            kind, model, sched, x, cuts=4, per_cut=2, images=64, queries=64
        )
        w_fine = loaded.weighting(run.weighting)(sched.level(sched.t_of_log_snr(fine)))
        identity = bounds.weighted_identity(result, kind, fine, error, w_fine, 2)
        rows = bounds.table_rows(result, identity)
        io.write_csv(tmp_path / "runs" / run.id / "bounds.csv", rows, list(bounds.COLUMNS))
    monkeypatch.chdir(ROOT)
    table, figure = tmp_path / "bounds.parquet", tmp_path / "bounds.png"
    argv = ["bounds-table", "--spec", str(spec_path), "--results", str(tmp_path)]
    assert main([*argv, "--table", str(table), "--figure", str(figure)]) == 0
    frame = tables.read("bounds", table)
    assert frame.height == 10 and figure.stat().st_size > 0
    assert frame.filter(pl.col("weighting") == "iddpm")["monotone"].unique().to_list() == [False]
    assert frame.filter(pl.col("weighting") == "simple")["monotone"].unique().to_list() == [True]
