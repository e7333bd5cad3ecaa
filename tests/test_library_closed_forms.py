"""Every entry of config/weightings.yaml and config/schedules.yaml against its closed form.

The closed forms live in tests/closed_forms.py, derived from the papers' training recipes, not
copied from the library's expressions. A library entry without a closed form here fails
``test_every_*_is_pinned``: adding to the library means adding its formula and monotone flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import closed_forms as cf
import numpy as np
import pytest
import torch

from diffobj.objectives import schedules, weightings

RANGE = (-10.0, 10.0)
LAM = np.array([-9.0, -5.0, -3.5, -3.2, -3.0, -2.0, -1.0, -0.25, 0.0, 0.5, 1.0, 1.7, 3.0, 5.0, 9.0])
T = np.array([0.03, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97])


@dataclass(frozen=True)
class Pin:
    """A weighting's closed form, as a function of lam alone or of (schedule name, t)."""

    monotone: bool  # non-increasing in lam on every schedule of its processes
    of_lam: Callable[[np.ndarray], np.ndarray] | None = None
    of_t: Callable[[str, np.ndarray], np.ndarray] | None = None


WEIGHTINGS = {
    "elbo": Pin(True, cf.elbo),
    "sigmoid": Pin(True, cf.sigmoid_b0),
    "fm": Pin(True, cf.fm),
    "iddpm": Pin(False, cf.iddpm),
    "edm": Pin(False, cf.edm),
    "edm_monotonic": Pin(True, cf.edm_monotonic),
    "p2": Pin(False, cf.p2),
    "min_snr": Pin(False, cf.min_snr),
    "indi": Pin(True, cf.indi),
    "eps_mse": Pin(False, of_t=cf.eps_mse),
    "simple": Pin(True, of_t=cf.simple),
    # with Jstar bound to cf.jstar_standin: e^(-lam) min(e^lam / sigmoid(lam), 100) falls in lam,
    # but the log-normal bump switched on below sigma* makes it rise again: not monotone
    "xu_optimal": Pin(False, cf.xu_optimal),
}
SCHEDULES = {  # name: (process, closed form of t)
    **{
        n: ("gaussian", cf.gaussian)
        for n in ("vp_cosine", "iddpm_cosine", "vp_linear", "rectified_flow", "shifted_cosine")
    },
    "edm_lognormal": ("gaussian", cf.gaussian),
    **{
        n: ("masked", cf.masked)
        for n in ("masked_linear", "md4_cosine", "masked_poly", "mdlm_cosine")
    },
}
DENSITY_SCHEDULES = {"edm_lognormal"}  # interpolated inverse CDF: ~1e-3, not float64-exact

SCHEDULE_LIBRARY = schedules.load_library()
WEIGHTING_LIBRARY = {  # Jstar bound to a known curve, as a run binds its optimal-loss table
    name: replace(w, optimal_loss=lambda lam: torch.sigmoid(lam)) if w.uses_optimal_loss else w
    for name, w in weightings.load_library().items()
}
PAIRS = [
    (w, s)
    for w, entry in WEIGHTING_LIBRARY.items()
    for s, (process, _) in SCHEDULES.items()
    if process in entry.processes
]


def build(name: str) -> schedules.Schedule:
    return schedules.build(name, SCHEDULE_LIBRARY[name], RANGE)


def closed_schedule(name: str, t: np.ndarray) -> dict[str, np.ndarray]:
    process, form = SCHEDULES[name]
    return form(name, t)


def closed_weighting(w: str, s: str, t: np.ndarray) -> np.ndarray:
    pin = WEIGHTINGS[w]
    if pin.of_t is not None:
        return pin.of_t(s, t)
    return pin.of_lam(closed_schedule(s, t)["log_snr"])


def test_every_library_weighting_is_pinned():
    missing = sorted(set(WEIGHTING_LIBRARY) - set(WEIGHTINGS))
    assert not missing, f"add a closed form and monotone flag to tests/closed_forms.py: {missing}"
    assert set(WEIGHTINGS) == set(WEIGHTING_LIBRARY)


def test_every_library_schedule_is_pinned():
    missing = sorted(set(SCHEDULE_LIBRARY) - set(SCHEDULES))
    assert not missing, f"add a closed form to tests/closed_forms.py: {missing}"
    assert set(SCHEDULES) == set(SCHEDULE_LIBRARY)
    for name, (process, _) in SCHEDULES.items():
        assert SCHEDULE_LIBRARY[name]["process"] == process, name


@pytest.mark.parametrize("name", [n for n, p in WEIGHTINGS.items() if p.of_lam is not None])
def test_weighting_is_its_closed_form_in_lam(name):
    # only lam is given: a weighting that secretly read t or alpha would return NaN
    lam = torch.tensor(LAM, dtype=torch.float64)
    nan = torch.full_like(lam, float("nan"))
    level = schedules.Level(nan, lam, nan, nan, nan, nan)
    got = WEIGHTING_LIBRARY[name](level).numpy()
    np.testing.assert_allclose(got, WEIGHTINGS[name].of_lam(LAM), rtol=1e-12)


@pytest.mark.parametrize(("weighting", "schedule"), PAIRS)
def test_weighting_on_every_schedule_of_its_process(weighting, schedule):
    got = WEIGHTING_LIBRARY[weighting](build(schedule).level(torch.tensor(T))).numpy()
    rtol = 5e-3 if schedule in DENSITY_SCHEDULES else 1e-10
    np.testing.assert_allclose(got, closed_weighting(weighting, schedule, T), rtol=rtol)


def _non_increasing_in_lam(values: np.ndarray) -> bool:
    """values along a grid of increasing t (decreasing lam)."""
    return bool((np.diff(values) >= -1e-9 * np.abs(values).max()).all())


@pytest.mark.parametrize(("weighting", "schedule"), PAIRS)
def test_monotone_flags(weighting, schedule):
    flag = WEIGHTINGS[weighting].monotone
    s = build(schedule)
    assert WEIGHTING_LIBRARY[weighting].is_monotone(s) is flag
    # the expected flag is a property of the closed form itself, on the same time range
    t0, t1 = s.t_range
    t = np.linspace(t0, t1, 4001)[1:-1]
    assert _non_increasing_in_lam(closed_weighting(weighting, schedule, t)) is flag


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_library_descriptions_claim_the_pinned_monotone_flag(name):
    description = WEIGHTING_LIBRARY[name].description
    if "not monotone" in description:
        assert not WEIGHTINGS[name].monotone
    elif "monotone" in description:
        assert WEIGHTINGS[name].monotone


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_is_its_closed_form(name):
    s = build(name)
    expected = closed_schedule(name, T)
    t = torch.tensor(T, dtype=torch.float64)
    density = name in DENSITY_SCHEDULES
    for key, value in expected.items():
        got = getattr(s, key)(t).numpy()
        if density:
            np.testing.assert_allclose(got, value, rtol=2e-3, atol=2e-3, err_msg=key)
        else:
            np.testing.assert_allclose(got, value, rtol=1e-10, atol=1e-12, err_msg=key)
    assert (np.diff(expected["log_snr"]) < 0).all()  # more noise later


def test_edm_monotonic_is_edm_above_its_peak_and_constant_below():
    peak = cf.edm_peak()
    assert peak == pytest.approx(-3.3078, abs=1e-3)
    lam = torch.tensor([peak - 6, peak - 1, peak, peak + 0.5, peak + 4], dtype=torch.float64)
    level = schedules.Level(lam, lam, lam, lam, lam, lam)
    mono = WEIGHTING_LIBRARY["edm_monotonic"](level).numpy()
    edm = WEIGHTING_LIBRARY["edm"](level).numpy()
    np.testing.assert_allclose(mono[:3], cf.edm(np.array(peak)), rtol=1e-12)
    np.testing.assert_allclose(mono[3:], edm[3:], rtol=1e-12)
    assert (edm[:2] < mono[:2]).all()  # EDM itself rises to its peak: not monotone
