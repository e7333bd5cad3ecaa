"""Schedules against their closed forms: log-SNR, its derivative, its inverse, endpoints."""

import math
import re

import pytest
import torch
from scipy import integrate, stats

from diffobj.objectives import schedules
from diffobj.objectives.schedules import ScheduleError

T = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
RANGE = (-10.0, 10.0)


def build(library, name, log_snr_range=RANGE):
    return schedules.build(name, library[name], log_snr_range)


@pytest.mark.parametrize(
    "name", ["vp_cosine", "iddpm_cosine", "vp_linear", "rectified_flow", "shifted_cosine"]
)
def test_gaussian_log_snr_is_log_alpha2_over_sigma2(schedule_library, name):
    s = build(schedule_library, name)
    expected = torch.log(s.alpha(T) ** 2 / s.sigma(T) ** 2)
    assert torch.allclose(s.log_snr(T), expected, rtol=1e-10, atol=1e-10)


def test_closed_forms_of_the_named_schedules(schedule_library):
    cos, rf, linear = (
        build(schedule_library, n) for n in ("vp_cosine", "rectified_flow", "vp_linear")
    )
    assert torch.allclose(cos.log_snr(T), -2 * torch.log(torch.tan(math.pi * T / 2)))
    assert torch.allclose(rf.log_snr(T), 2 * torch.log((1 - T) / T))
    assert torch.allclose(rf.dlog_snr_dt(T), -2 / (T * (1 - T)))
    assert torch.allclose(linear.log_snr(T), -torch.log(torch.expm1(0.1 * T + 9.95 * T**2)))
    vp = build(schedule_library, "iddpm_cosine")
    assert torch.allclose(vp.alpha(T) ** 2 + vp.sigma(T) ** 2, torch.ones_like(T))


@pytest.mark.parametrize(
    "name",
    [
        "vp_cosine",
        "iddpm_cosine",
        "vp_linear",
        "rectified_flow",
        "shifted_cosine",
        "masked_linear",
        "md4_cosine",
        "masked_poly",
        "mdlm_cosine",
    ],
)
def test_derivative_matches_finite_differences_and_inverse_is_exact(schedule_library, name):
    s = build(schedule_library, name)
    h = 1e-6
    finite = (s.log_snr(T + h) - s.log_snr(T - h)) / (2 * h)
    assert torch.allclose(s.dlog_snr_dt(T), finite, rtol=1e-6)
    assert torch.allclose(s.t_of_log_snr(s.log_snr(T)), T, atol=1e-12)


def test_masked_log_snr_and_alpha_derivative(schedule_library):
    s = build(schedule_library, "md4_cosine")
    alpha = 1 - torch.cos(math.pi * (1 - T) / 2)
    assert torch.allclose(s.alpha(T), alpha)
    assert torch.allclose(s.log_snr(T), torch.log(alpha / (1 - alpha)))
    assert torch.allclose(s.dalpha_dt(T), -math.pi / 2 * torch.sin(math.pi * (1 - T) / 2))


@pytest.mark.parametrize("name", ["masked_linear", "md4_cosine"])
@pytest.mark.parametrize("k", [0, 3, 7])
def test_masked_elbo_weight_integrates_binomial_masks_to_one(schedule_library, name, k):
    # ∫ (-alpha'/(1-alpha)) Binom(k; D, alpha) (D - k) dt = 1: every mask count gets unit weight
    s = schedules.from_expressions(name, "masked", alpha=schedule_library[name]["alpha"])
    D = 8

    def integrand(t):
        tt = torch.tensor(t, dtype=torch.float64)
        a, da = s.alpha(tt).item(), s.dalpha_dt(tt).item()
        return -da / (1 - a) * stats.binom.pmf(k, D, a) * (D - k)

    value, _ = integrate.quad(integrand, 1e-12, 1 - 1e-12, limit=200)
    assert value == pytest.approx(1.0, abs=1e-7)


def test_log_snr_range_sets_the_time_range(schedule_library):
    s = build(schedule_library, "vp_cosine", (-6.0, 4.0))
    t0, t1 = s.t_range
    assert s.log_snr(torch.tensor([t0, t1], dtype=torch.float64)).tolist() == pytest.approx(
        [4.0, -6.0], abs=1e-9
    )
    assert s.log_snr_endpoints() == pytest.approx((-6.0, 4.0), abs=1e-9)
    assert t0 == pytest.approx(2 / math.pi * math.atan(math.exp(-2.0)), abs=1e-12)


def test_density_schedule_draws_log_snr_from_the_density(schedule_library):
    # EDM: lam ~ N(2.4, 2.4^2) truncated to the range; uniform t maps through the inverse CDF
    s = build(schedule_library, "edm_lognormal")
    a, b = (RANGE[0] - 2.4) / 2.4, (RANGE[1] - 2.4) / 2.4
    cdf = stats.norm.cdf(a) + (1 - T.numpy()) * (stats.norm.cdf(b) - stats.norm.cdf(a))
    expected = 2.4 + 2.4 * stats.norm.ppf(cdf)
    assert s.log_snr(T).numpy() == pytest.approx(expected, abs=2e-3)
    # -dlam/dt = 1 / p(lam) for the normalised density
    p = stats.truncnorm.pdf(s.log_snr(T).numpy(), a, b, loc=2.4, scale=2.4)
    assert (-1 / s.dlog_snr_dt(T)).numpy() == pytest.approx(p, rel=1e-3)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"process": "gaussian", "alpha": "cos(t", "sigma": "t"}, "not valid math"),
        ({"process": "gaussian", "alpha": "1 - t", "sigma": "t", "beta": 1}, "unknown key 'beta'"),
        ({"process": "gaussian", "alpha": "t", "sigma": "1 - t"}, "must decrease"),
        ({"process": "poisson", "alpha": "1 - t"}, "process must be one of"),
        ({"process": "masked", "alpha": "1 - t", "log_snr": "-t"}, "exactly one"),
    ],
)
def test_bad_declarations_name_the_schedule(entry, message):
    with pytest.raises(ScheduleError, match=message) as err:
        schedules.build("mine", entry, RANGE, "lib.yaml")
    assert "mine" in str(err.value)


# ---- a schedule must decrease and cover its process's log-SNR range --------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # lam = 5 - 10 t reaches only [-5, 5]: training would silently skip |lam| > 5
        (
            {"process": "gaussian", "log_snr": "5 - 10*t"},
            "covers only [-5, 5] on t in [0, 1], not the process's log_snr_range [-10, 10]",
        ),
        # rises at the start: d/dt (20 - 40 t + 3 sin(20 t)) = 20 > 0 at t = 0
        ({"process": "gaussian", "log_snr": "20 - 40*t + 3*sin(20*t)"}, "must decrease with t"),
        # log(1/2 - t) is -inf at t = 1/2 (and nan after)
        ({"process": "gaussian", "log_snr": "log(1/2 - t)"}, "log-SNR is -inf at t = 0.5 "),
    ],
)
def test_schedule_that_does_not_decrease_over_its_range_is_refused(entry, message):
    with pytest.raises(ScheduleError, match=re.escape(message)) as err:
        schedules.build("mine", entry, RANGE, "lib.yaml")
    assert str(err.value).startswith("lib.yaml: schedules.mine: ")
    if "sin" in entry["log_snr"]:  # the t named is one where lam rises: -40 + 60 cos(20 t) > 0
        t = float(re.search(r"but lam\(([\d.e-]+)\)", str(err.value)).group(1))
        assert -40 + 60 * math.cos(20 * t) > 0


def test_schedule_that_overshoots_its_range_is_accepted_and_restricted():
    s = schedules.build("wide", {"process": "gaussian", "log_snr": "30 - 60*t"}, RANGE, "lib")
    assert s.t_range == pytest.approx((1 / 3, 2 / 3), abs=1e-12)  # 30 - 60 t = +-10
