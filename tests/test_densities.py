"""Training densities by name: the draws follow W·gap; the corrected one keeps the objective
L_w = c ∫ W g dlam; the uncorrected one (Xu et al.) has the effective weighting W·p.

A known error profile g(lam) stands in for the model, so every expectation is a 1-D integral
computed here by the midpoint rule, independently of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffobj import densities, schedules, weightings
from diffobj.errors import UserError

N = 40_000
EDGES = densities.bin_edges((-10.0, 10.0), 8)
GAP = torch.tensor([0.5, 1.0, 2.0, -0.3, 0.0, 3.0, 1.5, 0.2], dtype=torch.float64)
FINE = (torch.arange(20_000, dtype=torch.float64) + 0.5) / 20_000 * 20 - 10  # midpoints


def sigmoid(x):
    return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64))


def make(name: str, kind: str):
    if kind == "gaussian":
        schedule = schedules.build(
            "vp", {"process": "gaussian", "log_snr": "-2*log(tan(pi*t/2))"}, (-10, 10)
        )
        weighting = weightings.build("sig", "sigmoid(1 - lam)")
        big_w = lambda lam: sigmoid(1 - lam)  # noqa: E731 - W = w for Gaussian
    else:
        schedule = schedules.build("lin", {"process": "masked", "alpha": "1 - t"}, (-10, 10))
        weighting = weightings.build("elbo", "1")
        big_w = sigmoid  # W = w sigmoid(lam) for masked
    optimal = (np.array([-10.0, 10.0]), np.array([0.0, 0.0]))
    density = densities.build(name, kind, schedule, weighting, EDGES, optimal)
    density.running_error = GAP.clone()  # optimal loss 0: the gap is the running error
    density.refresh_schedule()
    return density, big_w


def profile(lam: torch.Tensor) -> torch.Tensor:
    """A known error per level, standing in for E[error | lam]."""
    return 1 + torch.sin(lam / 3) ** 2


def draws(density):
    level, factor = density.draw(N, torch.Generator().manual_seed(1), "cpu")
    return level.log_snr, factor


def bin_of(lam: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(lam, EDGES[1:-1])


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
@pytest.mark.parametrize(
    ("name", "floor"), [("optimal_loss_schedule", 0.0), ("adaptive_corrected", 0.05)]
)
def test_draws_follow_w_times_gap(name, floor, kind):
    density, big_w = make(name, kind)
    lam, _ = draws(density)
    positive = GAP.clamp_min(0).mean()  # the mean gap, negatives counted as 0
    gap = GAP.clamp_min(floor * positive)  # Xu et al.: max(gap, 0); corrected: a small floor
    mass = torch.stack([big_w(FINE[bin_of(FINE) == k]).sum() for k in range(8)]) * gap
    p = mass / mass.sum()
    counts = torch.bincount(bin_of(lam), minlength=8).double()
    # p is tabulated on a grid of 8193 points (cell h = 20/8192): a jump at a bin edge is
    # resolved to one cell, so about h·p_edge·N/2 draws (up to ~12 here) cross an edge
    assert ((counts - N * p).abs() <= 5 * (N * p).sqrt() + 20).all(), (counts, N * p)
    if name == "optimal_loss_schedule":  # gap <= 0: drawn only within one cell of an edge
        zero = (bin_of(lam) == 3) | (bin_of(lam) == 4)
        edge = torch.minimum((lam[zero] + 5).abs(), (lam[zero] - 2.5).abs())
        assert (edge <= 20 / 8192).all()


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_the_corrected_density_keeps_the_objective(kind):
    density, big_w = make("adaptive_corrected", kind)
    lam, factor = draws(density)
    values = factor * profile(lam)
    c = 0.5 if kind == "gaussian" else 1.0
    expected = c * float((big_w(FINE) * profile(FINE)).mean()) * 20  # c ∫ W g dlam
    sem = float(values.std()) / math.sqrt(N)
    assert abs(float(values.mean()) - expected) < 5 * sem


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_without_correction_the_effective_weighting_is_w_times_p(kind):
    density, big_w = make("optimal_loss_schedule", kind)
    lam, factor = draws(density)
    values = factor * profile(lam)
    c = 0.5 if kind == "gaussian" else 1.0
    p = big_w(FINE) * GAP.clamp_min(0)[bin_of(FINE)]
    p = p / (p.mean() * 20)  # normalised density over [-10, 10]
    expected = c * float((big_w(FINE) * p * profile(FINE)).mean()) * 20  # c ∫ W p g dlam
    objective = c * float((big_w(FINE) * profile(FINE)).mean()) * 20
    sem = float(values.std()) / math.sqrt(N)
    assert abs(float(values.mean()) - expected) < 5 * sem
    assert abs(expected - objective) > 20 * sem  # and that is a different objective


def test_before_any_gap_is_seen_the_uncorrected_density_draws_from_the_schedule():
    density, big_w = make("optimal_loss_schedule", "gaussian")
    density.running_error[:] = float("nan")
    density.refresh_schedule()
    lam, factor = draws(density)
    assert density.density_schedule is None
    assert torch.allclose(factor, 0.5 * big_w(lam))  # c W, uncorrected


@pytest.mark.parametrize(
    ("training", "name"),
    [
        ({}, "schedule"),
        ({"adaptive": True}, "adaptive_corrected"),
        ({"density": "optimal_loss_schedule"}, "optimal_loss_schedule"),
        ({"adaptive": True, "density": "adaptive_corrected"}, "adaptive_corrected"),
    ],
)
def test_density_names_and_the_old_boolean(training, name):
    assert densities.density_name(training) == name


def test_contradicting_density_settings_are_rejected():
    with pytest.raises(UserError, match="training.adaptive: true means density adaptive_corrected"):
        densities.density_name({"adaptive": True, "density": "optimal_loss_schedule"})
    with pytest.raises(UserError, match="training.density: unknown 'gap'"):
        densities.density_name({"density": "gap"})


def test_training_with_the_papers_weighting_and_schedule(tmp_path, one_cpu_thread):
    """A real (tiny) training: xu_optimal reads J* from the table, the density refreshes."""
    from pathlib import Path

    import yaml

    from diffobj import spec
    from diffobj.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from diffobj.train import TrainOptions, train

    root = Path(__file__).resolve().parents[1]
    raw = (
        spec.load(root / "config" / "config.yaml", root=root)
        .run("digits-gaussian-vp_cosine-elbo-mlp-s0")
        .resolved()
    )
    library = yaml.safe_load((root / "config" / "weightings.yaml").read_text())
    raw["weighting"] = {"name": "xu_optimal", **library["xu_optimal"]}
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    raw["data"]["images"] = str(data)
    raw["model"]["channels"] = 8
    raw["training"].update(
        {"steps": 6, "batch_size": 8, "warmup_steps": 2, "log_every": 3, "checkpoint_every": 100}
    )
    raw["training"]["density"] = "optimal_loss_schedule"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    table = tmp_path / "optimal.csv"
    table.write_text("log_snr,optimal_loss\n-10,0.3\n0,0.1\n10,0.0\n")
    options = dict(device="cpu", progress=False, eval_images=8, adaptive_refresh=2)
    with pytest.raises(UserError, match="uses Jstar, which needs --optimal-loss"):
        train(cfg, tmp_path / "run", TrainOptions(**options))
    result = train(cfg, tmp_path / "run", TrainOptions(optimal_loss=table, **options))
    assert result.step == 6 and all(math.isfinite(r["loss"]) for r in result.log_rows)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME)
    # every draw of the refresh windows is pooled: 48 in 16 bins, none has MIN_DRAWS yet
    assert state["adaptive"]["pending_count"].sum() == 6 * 8
    assert state["adaptive"]["running_error"].isnan().all()


def test_a_bin_enters_the_gap_only_once_it_has_pooled_min_draws():
    # 40 draws of error 2.0 in bin 0 per window: too few alone (a chance gap where W is large
    # would draw the run there); the second window brings 80 pooled draws, folded in as one mean
    density, _ = make("optimal_loss_schedule", "gaussian")
    count = torch.zeros(8, dtype=torch.float64)
    count[0] = 40
    density.update(2.0 * count, count)
    assert torch.equal(density.running_error, GAP)
    density.update(2.0 * count, count)
    expected = GAP.clone()
    expected[0] = (1 - densities.ERROR_EMA) * GAP[0] + densities.ERROR_EMA * 2.0
    assert torch.allclose(density.running_error, expected)
    assert density.pending_count.sum() == 0  # pooled draws are used once
