"""The optimal loss inside expressions (``Jstar``) and the paper's weighting (Xu et al. §5)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffobj import shared_paths
from diffobj import spec as spec_lib
from diffobj.errors import UserError
from diffobj.objectives import schedules, weightings
from diffobj.optimal import curve as optimal_curve
from diffobj.optimal.curve import OptimalLossCurve, bind, needs_optimal_loss

ROOT = Path(__file__).resolve().parents[1]

LAM_TABLE = [-4.0, 0.0, 2.0, 6.0]
J_TABLE = [0.30, 0.10, -0.001, 0.0]  # a slightly negative estimate where J* ~ 0


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "optimal.csv"
    rows = "".join(f"{lam},{j}\n" for lam, j in zip(LAM_TABLE[::-1], J_TABLE[::-1], strict=True))
    path.write_text("log_snr,optimal_loss\n" + rows)  # unsorted on purpose
    return path


def level(lam: list[float]):
    s = schedules.build(
        "vp_cosine", {"process": "gaussian", "log_snr": "-2*log(tan(pi*t/2))"}, (-10.0, 10.0)
    )
    return s.level(s.t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))


def by_hand(lam: float, kind: str) -> float:
    """Through the clipped table points, constant beyond the ends. Masked: linear. Gaussian: in
    the x0 scale (J e^-lam), log-linear between two positive points, else linear."""
    pts = sorted(zip(LAM_TABLE, [max(j, 0.0) for j in J_TABLE], strict=True))
    scale = (lambda x: math.exp(-x)) if kind == "gaussian" else (lambda x: 1.0)
    xs, ys = [x for x, _ in pts], [y * scale(x) for x, y in pts]
    if lam <= xs[0]:
        return ys[0] / scale(lam)
    if lam >= xs[-1]:
        return ys[-1] / scale(lam)
    k = next(i for i in range(len(xs) - 1) if xs[i] <= lam <= xs[i + 1])
    f = (lam - xs[k]) / (xs[k + 1] - xs[k])
    if kind == "gaussian" and ys[k] > 0 and ys[k + 1] > 0:
        y = ys[k] ** (1 - f) * ys[k + 1] ** f
    else:
        y = ys[k] + (ys[k + 1] - ys[k]) * f
    return y / scale(lam)


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_jstar_is_the_table_interpolated_in_lam_clipped_at_zero_held_at_the_ends(table, kind):
    w = bind(weightings.build("j", "Jstar"), table, "r", kind)
    lam = [-9.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 9.0]
    expected = [by_hand(v, kind) for v in lam]
    assert w(level(lam)).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if kind == "masked":  # plain linear: the midpoint of (-4, .3) and (0, .1)
        assert w(level([-2.0])).item() == pytest.approx(0.2)


def test_the_paper_weighting_against_its_formula_in_the_ve_x0_view(weighting_library, table):
    w = bind(weighting_library["xu_optimal"], table, "r", "gaussian")
    p = w.params
    lam = np.array([-3.0, -1.0, 0.5, 1.5, 2.5, 3.0, 5.0])
    j_eps = np.array([by_hand(v, "gaussian") for v in lam])
    sigma = np.exp(-lam / 2)  # sigma-hat = sigma / alpha
    j_x0 = sigma**2 * j_eps  # Table 1: x0 loss = e^(-lam) eps loss
    with np.errstate(divide="ignore"):
        inverse = np.where(j_x0 > 0, 1 / np.where(j_x0 > 0, j_x0, 1), np.inf)
    bump = np.exp(-((np.log(sigma) - p["mu"]) ** 2) / (2 * p["s"] ** 2)) / (
        p["s"] * math.sqrt(2 * math.pi)
    )
    w_sigma = p["a"] * np.minimum(inverse, p["w_max"]) + bump * (sigma < p["sigma_star"])
    expected = sigma**2 * w_sigma  # the weight on the x0-MSE, moved onto the eps-MSE
    assert w(level(lam.tolist())).numpy() == pytest.approx(expected, rel=1e-9)


def test_unbound_jstar_is_undefined_not_a_silent_number(weighting_library):
    w = weighting_library["xu_optimal"]
    assert w.uses_optimal_loss and not weighting_library["edm"].uses_optimal_loss
    assert torch.isnan(w(level([0.0, 1.0]))).all()
    assert (
        w.is_monotone(
            schedules.build("rf", {"process": "gaussian", "log_snr": "2*log((1-t)/t)"}, (-10, 10))
        )
        is False
    )
    with pytest.raises(UserError, match="run r1: weighting 'xu_optimal' uses Jstar"):
        bind(w, None, "r1", "gaussian")
    assert bind(weighting_library["edm"], None, "r1", "gaussian") is weighting_library["edm"]


def test_a_bad_table_names_the_file(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("log_snr,loss\n0,1\n")
    with pytest.raises(UserError, match="t.csv: an optimal-loss table needs columns"):
        OptimalLossCurve.from_table(bad, "gaussian")


@pytest.mark.parametrize(
    ("entry", "training", "needed"),
    [
        ({"name": "edm", "expr": "normal_pdf(lam, 2, 1)"}, {}, False),
        ({"name": "x", "expr": "min(1 / Jstar, 5)"}, {}, True),
        ({"name": "elbo", "expr": "1"}, {"adaptive": True}, True),
        ({"name": "elbo", "expr": "1"}, {"density": "optimal_loss_schedule"}, True),
        ({"name": "elbo", "expr": "1"}, {"density": "schedule"}, False),
    ],
)
def test_which_runs_need_the_optimal_loss(entry, training, needed):
    assert needs_optimal_loss(entry, training) is needed


def test_the_dag_gives_the_table_only_to_runs_that_read_it(tmp_path):
    spec = {
        "experiment": "jstar",
        "datasets": {"digits": {"source": "sklearn_digits"}},
        "processes": {"gaussian": {"kind": "gaussian", "log_snr_range": [-10, 10]}},
        "models": {"tiny": {"channels": 8, "channel_mult": [1], "num_blocks": 1}},
        "grid": [
            {
                "dataset": "digits",
                "process": "gaussian",
                "schedule": "vp_cosine",
                "weighting": ["elbo", "xu_optimal"],
                "model": "tiny",
            }
        ],
        "optimal_loss": {"convergence": False},
        "evaluation": {"fd_classifier": False, "nll": False},
        "figures": [],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    targets = [
        f"results/jstar/runs/digits-gaussian-vp_cosine-{w}-tiny-s0/model.pt"
        for w in ("elbo", "xu_optimal")
    ]
    out = subprocess.run(
        [*snakemake, "--directory", str(tmp_path), "--config", f"spec={path}", "-n", "-p"]
        + targets,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if "diffobj train" in line]
    table = shared_paths.optimal_table(spec_lib.load(path), "digits", "gaussian")
    needs = {
        w: f"--optimal-loss {table}" in line
        for line in commands
        for w in ("elbo", "xu_optimal")
        if f"-{w}-tiny" in line
    }
    assert needs == {"elbo": False, "xu_optimal": True}


def test_optimal_curve_reexports_the_name():
    assert optimal_curve.OPTIMAL_LOSS == "Jstar"
