"""Training densities by name: the draws follow W·gap; the corrected one keeps the objective
L_w = c ∫ W g dlam; the uncorrected one (Xu et al.) has the effective weighting W·p.

A known error profile g(lam) stands in for the model, so every expectation is a 1-D integral
computed here by the midpoint rule, independently of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffobj.errors import UserError
from diffobj.objectives import densities, schedules, weightings

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # 8k-point tables: threads only cost

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
    density.running_gap = GAP.clone()
    density.refresh_schedule()
    return density, big_w


def profile(lam: torch.Tensor) -> torch.Tensor:
    """A known error per level, standing in for E[error | lam]."""
    return 1 + torch.sin(lam / 3) ** 2


def draws(density):
    level, factor, _ = density.draw(N, torch.Generator().manual_seed(1), "cpu")
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
    density.running_gap[:] = float("nan")
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
    from diffobj.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from diffobj.training.train import TrainOptions, train

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
    raw["training"]["keep_checkpoint"] = True  # its density state is read below
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
    assert state["adaptive"]["running_gap"].isnan().all()


def test_a_bin_enters_the_gap_only_once_it_has_pooled_min_draws():
    # 40 draws of error 2.0 in bin 0 per window: too few alone (a chance gap where W is large
    # would draw the run there); the second window brings 80 pooled draws, folded in as one mean
    density, _ = make("optimal_loss_schedule", "gaussian")
    count = torch.zeros(8, dtype=torch.float64)
    count[0] = 40
    density.update(2.0 * count, count)
    assert torch.equal(density.running_gap, GAP)
    density.update(2.0 * count, count)
    expected = GAP.clone()
    expected[0] = (1 - densities.ERROR_EMA) * GAP[0] + densities.ERROR_EMA * 2.0
    assert torch.allclose(density.running_gap, expected)
    assert density.pending_count.sum() == 0  # pooled draws are used once


# -- the gap is measured per sample: error - J*(lam_i), then binned ---------------------------------
#
# A steep J* like a finite training set's (the digits table falls by orders of magnitude across
# one of the 16 bins of [-10, 13]): x0 scale v exp(-a e^lam), eps scale e^lam times that. The
# errors below are functions of each draw's lam, standing in for the model, and go through the
# trainer's path: GapDensity.loss -> BinWindow (the refresh window) -> GapDensity.update.

WIDE = densities.bin_edges((-10.0, 13.0), 16)
TABLE_LAM = np.linspace(-10.0, 13.0, 32)
TABLE_J = np.exp(TABLE_LAM) * 0.3 * np.exp(-0.05 * np.exp(TABLE_LAM))


def steep(name: str, kind: str):
    if kind == "gaussian":
        schedule = schedules.build(
            "vp", {"process": "gaussian", "log_snr": "-2*log(tan(pi*t/2))"}, (-10, 13)
        )
        weighting = weightings.build("sig", "sigmoid(1 - lam)")
    else:
        schedule = schedules.build("lin", {"process": "masked", "alpha": "1 - t"}, (-10, 13))
        weighting = weightings.build("elbo", "1")
    return densities.build(name, kind, schedule, weighting, WIDE, (TABLE_LAM, TABLE_J))


def table_optimal(lam: torch.Tensor, kind: str) -> torch.Tensor:
    """J*(lam): the table interpolated at each lam (the definition every consumer uses)."""
    from diffobj.objectives import scales

    values = scales.interpolate_optimal(lam.double().numpy(), TABLE_LAM, TABLE_J, kind)
    return torch.as_tensor(values)


def refresh(density, monkeypatch, error_of_lam, refreshes: int = 3, batch: int = 2048):
    """Train-like refreshes with errors error_of_lam(lam, dtype); returns every lam drawn."""
    from diffobj.training.train_log import BinWindow

    def fake_error(kind, model_fn, x, level, generator):
        return error_of_lam(level.log_snr, x.dtype)

    monkeypatch.setattr(densities, "evaluate_error", fake_error)
    generator = torch.Generator().manual_seed(3)
    x = torch.zeros(batch, 1, dtype=torch.float32)
    drawn = []
    for _ in range(refreshes):
        window = BinWindow(density.edges, torch.device("cpu"))
        terms = density.loss(None, x, generator)
        window.add(terms.log_snr, terms.excess, terms.loss.mean(), torch.tensor(0.0))
        density.update(window.error_sum, window.count)
        drawn.append(terms.log_snr)
    return torch.cat(drawn)


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_exactly_optimal_model_has_no_gap_and_keeps_the_runs_schedule(kind, dtype, monkeypatch):
    density = steep("optimal_loss_schedule", kind)
    refresh(density, monkeypatch, lambda lam, _: table_optimal(lam, kind).to(dtype))
    seen = ~density.running_gap.isnan()
    assert seen.sum() >= 6  # bins with MIN_DRAWS (the ends of the schedules are rarely drawn)
    # J* across a bin spans up to 1e20 here; J* at the bin centre gave gaps of that order
    per_bin_scale = torch.as_tensor(TABLE_J).max()
    if dtype == torch.float64:
        assert (density.running_gap[seen] == 0).all(), density.running_gap
        assert density.density_schedule is None  # no gap anywhere: the run's schedule
    else:  # a float32 model's error of J* is J* to 6e-8
        assert (density.running_gap[seen].abs() <= 1e-7 * per_bin_scale).all()


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_a_known_gap_profile_is_recovered_per_bin(kind, monkeypatch):
    gap = torch.linspace(-0.2, 1.0, 16, dtype=torch.float64) ** 3  # negative, ~0, positive
    density = steep("optimal_loss_schedule", kind)

    def error(lam, _):
        return table_optimal(lam, kind) + gap[torch.bucketize(lam, WIDE[1:-1])]

    refresh(density, monkeypatch, error)
    seen = ~density.running_gap.isnan()
    assert seen.sum() >= 6
    assert torch.allclose(density.running_gap[seen], gap[seen], rtol=1e-9, atol=1e-12)
    assert torch.allclose(density.gap()[seen], gap[seen].clamp_min(0), atol=1e-12)  # max(gap, 0)


def test_a_smooth_gap_is_binned_as_the_mean_over_the_draws(monkeypatch):
    """Within a bin the gap is the mean of g(lam_i) over the bin's draws, whatever J* does."""
    density = steep("optimal_loss_schedule", "gaussian")

    def g(lam):
        return 0.1 + torch.sin(lam / 2) ** 2

    drawn = refresh(
        density, monkeypatch, lambda lam, _: table_optimal(lam, "gaussian") + g(lam), refreshes=1
    )
    index = torch.bucketize(drawn, WIDE[1:-1])
    for k in range(16):
        if (index == k).sum() >= densities.MIN_DRAWS:
            expected = g(drawn[index == k]).mean()
            assert torch.isclose(density.running_gap[k], expected, rtol=1e-9), k


def test_a_checkpoint_from_before_the_per_sample_gap_is_measured_afresh(capsys):
    density = steep("optimal_loss_schedule", "gaussian")
    old = {
        "running_error": torch.ones(16, dtype=torch.float64),
        "pending_sum": torch.zeros(16, dtype=torch.float64),
        "pending_count": torch.zeros(16, dtype=torch.float64),
    }
    assert density.load_state_dict(old) is False
    assert density.running_gap.isnan().all() and density.density_schedule is None
    assert "measured afresh" in capsys.readouterr().err
    new = steep("optimal_loss_schedule", "gaussian")
    new.running_gap = GAP.repeat(2).clone()
    assert density.load_state_dict(new.state_dict()) is True
    assert torch.equal(density.running_gap, new.running_gap)


# -- the measure: Xu et al.'s p ∝ w_sigma (J_sigma - J*_sigma), over log sigma ---------------------


def test_with_xu_optimal_the_draws_follow_w_sigma_times_the_x0_gap_per_unit_log_sigma(tmp_path):
    """In the paper's variables: sigma = e^(-lam/2), x0 errors, its weight w_sigma written out
    here. The drawn log sigma follow w_sigma (J - J*)_x0 per unit log sigma; per unit sigma the
    density would carry the Jacobian dsigma/dlog sigma = sigma, which these draws reject."""
    from pathlib import Path

    import yaml

    from diffobj.objectives import scales
    from diffobj.optimal import curve as optimal_curve

    root = Path(__file__).resolve().parents[1]
    entry = yaml.safe_load((root / "config" / "weightings.yaml").read_text())["xu_optimal"]
    table = tmp_path / "optimal.csv"
    table.write_text(
        "log_snr,optimal_loss\n"
        + "".join(f"{a},{b}\n" for a, b in zip(TABLE_LAM, TABLE_J, strict=True))
    )
    weighting = optimal_curve.bind(weightings.build("xu_optimal", entry), table, "r", "gaussian")
    schedule = schedules.build(
        "edm", {"process": "gaussian", "log_snr": "-2*log(tan(pi*t/2))"}, (-10, 13)
    )
    density = densities.build(
        "optimal_loss_schedule", "gaussian", schedule, weighting, WIDE, (TABLE_LAM, TABLE_J)
    )
    gap_eps = torch.linspace(0.05, 0.4, 16, dtype=torch.float64)  # per bin, eps scale
    density.running_gap = gap_eps.clone()
    density.refresh_schedule()
    n = 40_000
    lam = density.draw(n, torch.Generator().manual_seed(5), "cpu")[0].log_snr
    # the paper's w_sigma on the x0 error (params of config/weightings.yaml), at log sigma = s
    p = entry["params"]
    fine = (torch.arange(46_000, dtype=torch.float64) + 0.5) / 46_000 * 23 - 10  # lam midpoints
    log_sigma = -fine / 2
    j_x0 = torch.as_tensor(scales.eps_to_x0(table_optimal(fine, "gaussian").numpy(), fine.numpy()))
    w_sigma = p["a"] * torch.minimum(1 / j_x0, torch.tensor(p["w_max"])) + torch.exp(
        -0.5 * ((log_sigma - p["mu"]) / p["s"]) ** 2
    ) / (p["s"] * math.sqrt(2 * math.pi)) * (log_sigma < math.log(p["sigma_star"]))
    gap_x0 = torch.exp(-fine) * gap_eps[torch.bucketize(fine, WIDE[1:-1])]
    index = torch.bucketize(fine, WIDE[1:-1])
    counts = torch.bincount(torch.bucketize(lam, WIDE[1:-1]), minlength=16).double()

    def expected(per_unit):  # bin masses of a density given per unit log sigma, midpoint rule
        mass = torch.stack([per_unit[index == k].sum() for k in range(16)])
        return n * mass / mass.sum()

    log_sigma_measure = expected(w_sigma * gap_x0)
    assert ((counts - log_sigma_measure).abs() <= 5 * log_sigma_measure.sqrt() + 20).all()
    sigma_measure = expected(w_sigma * gap_x0 * torch.exp(log_sigma))  # p(sigma) d sigma
    assert ((counts - sigma_measure).abs() > 5 * sigma_measure.sqrt() + 20).any()
