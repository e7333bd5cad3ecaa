"""Weightings against the formulas of docs/science.md §2 and the identities of §7."""

import math
import re
import sys

import pytest
import torch
from scipy import stats

from diffobj.objectives import schedules, weightings
from diffobj.objectives.weightings import WeightingError

T = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)


def schedule(library, name, log_snr_range=(-10.0, 10.0)):
    return schedules.build(name, library[name], log_snr_range)


@pytest.mark.parametrize(
    "schedule_name", ["vp_cosine", "rectified_flow", "md4_cosine", "masked_linear"]
)
def test_monotone_flags(schedule_library, weighting_library, schedule_name):
    s = schedule(schedule_library, schedule_name)
    flags = {
        name: w.is_monotone(s) for name, w in weighting_library.items() if s.process in w.processes
    }
    for name in ("elbo", "sigmoid", "fm"):
        assert flags[name], name
    for name in ("iddpm", "edm", "p2", "min_snr"):
        assert not flags[name], name
    if s.process == "masked":
        assert flags["simple"]


def test_rectified_flow_v_loss_with_uniform_time_is_the_fm_weighting(
    schedule_library, weighting_library
):
    # recipe: w = 2 p(lam) c_eps(lam), p = |dt/dlam| for t ~ U, c_eps = 1/alpha^2 for the v-loss
    s = schedule(schedule_library, "rectified_flow")
    level = s.level(T)
    recipe = 2 / (-level.dlog_snr_dt) / level.alpha**2
    assert torch.allclose(weighting_library["fm"](level), recipe, rtol=1e-12)


def test_eps_mse_with_cosine_is_the_iddpm_weighting_over_pi(schedule_library, weighting_library):
    level = schedule(schedule_library, "vp_cosine").level(T)
    assert torch.allclose(
        weighting_library["eps_mse"](level), weighting_library["iddpm"](level) / math.pi
    )


@pytest.mark.parametrize("schedule_name", ["md4_cosine", "masked_linear"])
def test_total_cross_entropy_weights_in_terms_of_alpha(
    schedule_library, weighting_library, schedule_name
):
    level = schedule(schedule_library, schedule_name).level(T)
    a, da = level.alpha, level.dalpha_dt
    total = {
        n: w.total_weight(level, "masked")
        for n, w in weighting_library.items()
        if "masked" in w.processes
    }
    assert torch.allclose(total["elbo"], -da / (1 - a))
    assert torch.allclose(total["simple"], torch.ones_like(a))
    assert torch.allclose(total["sigmoid"], -da / (1 - a + a * math.exp(-0.0)))
    assert torch.allclose(total["fm"], -da / torch.sqrt(a * (1 - a)))
    assert torch.allclose(total["iddpm"], -2 * da * torch.sqrt(a / (1 - a)))


def test_simple_equals_sigmoid_with_zero_bias_on_the_linear_schedule(
    schedule_library, weighting_library
):
    level = schedule(schedule_library, "masked_linear").level(T)
    assert torch.allclose(weighting_library["simple"](level), weighting_library["sigmoid"](level))


def test_fm_total_weight_stays_finite_at_the_end_of_md4_cosine(schedule_library, weighting_library):
    s = schedules.from_expressions("c", "masked", alpha=schedule_library["md4_cosine"]["alpha"])
    end = s.level(torch.tensor([1 - 1e-5], dtype=torch.float64))
    assert weighting_library["fm"].total_weight(end, "masked").item() == pytest.approx(
        math.pi / 2 * math.sqrt(2), rel=1e-4
    )


def test_edm_weighting_is_the_lognormal_density_times_its_loss_weight(weighting_library):
    # EDM's recipe, converted to w(lam) by w = 2 p(lam) c_eps(lam) (docs/science.md §2.1):
    # - training draws ln sigma ~ N(P_mean = -1.2, P_std = 1.2) and lam = -2 ln sigma, so
    #   P(Lam <= lam) = P(ln sigma >= -lam/2), the normal's survival function at -lam/2; p is
    #   its derivative (a central difference here, from EDM's own sigma distribution);
    # - the loss is (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 ||D(x + sigma n) - x||^2 and
    #   D = x_noisy - sigma eps_hat, so on the eps-MSE it weighs c_eps = sigma^2 times that.
    # The library keeps ddm_dynamical's normalisation N(lam; 2.4, 2.4)(e^{-lam} + sigma_d^2),
    # which is sigma_d^2 / 2 times the recipe.
    lam = torch.linspace(-8, 8, 17, dtype=torch.float64)
    h = 1e-5

    def cdf(x):
        return stats.norm.sf(-x.numpy() / 2, loc=-1.2, scale=1.2)

    p = torch.from_numpy((cdf(lam + h) - cdf(lam - h)) / (2 * h))
    sigma, sigma_d = torch.exp(-lam / 2), 0.5
    c_eps = sigma**2 * (sigma**2 + sigma_d**2) / (sigma * sigma_d) ** 2
    recipe = 2 * p * c_eps
    level = schedules.Level(lam, lam, lam, lam, lam, lam)
    torch.testing.assert_close(
        weighting_library["edm"](level), sigma_d**2 / 2 * recipe, rtol=1e-7, atol=0
    )


def test_parameters_can_be_overridden(weighting_library):
    shifted = weightings.with_params(weighting_library["sigmoid"], {"b": 2.0}, "sigmoid_b2")
    lam = torch.linspace(-5, 5, 11, dtype=torch.float64)
    level = schedules.Level(lam, lam, lam, lam, lam, lam)
    assert torch.allclose(shifted(level), torch.sigmoid(2 - lam))
    with pytest.raises(WeightingError, match="no parameter 'c'"):
        weightings.with_params(weighting_library["sigmoid"], {"c": 1.0}, "bad")


def test_a_weighting_added_to_the_library_file_loads(tmp_path, root):
    path = tmp_path / "weightings.yaml"
    path.write_text(
        (root / "config" / "weightings.yaml").read_text() + '\nmy_w: "sigmoid(1 - lam)**2"\n'
    )
    lib = weightings.load_library(path)
    lam = torch.linspace(-5, 5, 11, dtype=torch.float64)
    assert torch.allclose(
        lib["my_w"](schedules.Level(lam, lam, lam, lam, lam, lam)), torch.sigmoid(1 - lam) ** 2
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("__import__('os')", "unknown function"),
        ({"expr": "lam", "colour": "red"}, "unknown key 'colour'"),
        ({"expr": "b * lam", "params": {"b": "two"}}, "expected numbers"),
        ({"expr": "lam", "processes": ["poisson"]}, "unknown process"),
    ],
)
def test_bad_weightings_name_file_and_weighting(entry, message):
    with pytest.raises(WeightingError, match=message) as err:
        weightings.build("mine", entry, "w.yaml")
    assert "w.yaml: weightings.mine" in str(err.value)


# ---- a weighting must be finite, >= 0 and not all zero on its process's range ---------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # -lam is most negative at the top of the range, lam = 10
        ("-lam", "w = -10 < 0 at lam = 10 "),
        # lam**400 overflows float64 (10**400) at the top of the range
        ("lam**400", "w = inf at lam = 10 "),
        ("0 * sigmoid(lam)", "w = 0 everywhere"),
        # 1 + sin(lam) touches 0 (at lam = -pi/2, 3pi/2) but is never below it
        ("1 + sin(lam)", None),
    ],
)
def test_weighting_values_are_checked_on_the_log_snr_range(schedule_library, expr, message):
    w = weightings.build("mine", expr, "w.yaml")
    s = schedule(schedule_library, "vp_cosine")
    if message is None:  # >= 0 everywhere, zero only at isolated points: accepted
        weightings.check_values(w, s, "gaussian", "w.yaml: weightings.mine")
        return
    with pytest.raises(WeightingError, match=re.escape(message)) as err:
        weightings.check_values(w, s, "gaussian", "w.yaml: weightings.mine")
    assert str(err.value).startswith("w.yaml: weightings.mine: ")
    assert "schedule vp_cosine, gaussian log-SNR range [-10, 10]" in str(err.value)


def test_triple_exponential_is_refused_where_it_overflows(schedule_library):
    # exp(exp(exp(lam))) exceeds float64 (e^709.78) once exp(lam) > log(709.78), lam > 1.880
    w = weightings.build("mine", "exp(exp(exp(lam)))", "w.yaml")
    s = schedule(schedule_library, "rectified_flow")
    with pytest.raises(WeightingError, match=r"w = inf at lam = ([\d.]+) ") as err:
        weightings.check_values(w, s, "gaussian", "w.yaml: weightings.mine")
    lam = float(re.search(r"at lam = ([\d.]+)", str(err.value)).group(1))
    assert lam > math.log(math.log(sys.float_info.max))


def test_every_library_weighting_passes_under_every_schedule_of_its_processes(
    schedule_library, weighting_library
):
    for w in weighting_library.values():
        for name, entry in schedule_library.items():
            if entry["process"] in w.processes:
                s = schedule(
                    schedule_library, name, schedules.DEFAULT_LOG_SNR_RANGE[entry["process"]]
                )
                weightings.check_values(w, s, entry["process"], f"weightings.{w.name}")
