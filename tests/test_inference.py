"""Seed-level inference checked on simulated studies with a known truth.

Simulation model (every test here): the metric of configuration c trained with seed s is

    y[c, s] = mu[c] + b[s] + e[c, s],   b[s] ~ N(0, tau^2),  e[c, s] ~ N(0, sigma^2)

b is what a seed gives every arm that shares it (data order, shared noise), e the rest of the
seed-to-seed variation of one arm plus its within-run noise (which samples were scored). The
ratio tau / sigma is the "seed / within" ratio of the tests.
"""

import itertools

import numpy as np
import pytest

from diffobj.analysis import inference

REPS = 4000


def simulate(rng, mu, seeds, tau, sigma=1.0, reps=REPS):
    mu = np.asarray(mu, dtype=float)
    b = rng.normal(0.0, tau, size=(reps, 1, seeds))
    e = rng.normal(0.0, sigma, size=(reps, len(mu), seeds))
    return mu[None, :, None] + b + e


def test_textbook_t_interval():
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451: half-width 1.963243
    lo, hi = inference.mean_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert (lo, hi) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("seeds", [5, 8])
def test_the_interval_over_seeds_covers_the_mean_at_every_seed_to_within_ratio(seeds, ratio):
    rng = np.random.default_rng(seeds * 10 + int(ratio))
    y = simulate(rng, [10.0], seeds, tau=ratio)[:, 0]
    lo, hi = inference.mean_interval(y)
    coverage = np.mean((lo <= 10.0) & (hi >= 10.0))
    assert coverage >= 0.93  # nominal 0.95; the Monte Carlo SE at 4000 repetitions is 0.0034


def test_holm_matches_its_definition_on_a_worked_example():
    # sorted p 0.01, 0.02, 0.04, 0.3 times 4, 3, 2, 1 = 0.04, 0.06, 0.08, 0.3, made monotone
    p = np.array([0.04, 0.01, 0.3, 0.02])
    assert inference.holm(p).tolist() == pytest.approx([0.08, 0.04, 0.3, 0.06])
    assert inference.holm(np.array([0.03, 0.04])).tolist() == pytest.approx(
        [0.06, 0.06]
    )  # monotone
    assert inference.holm(np.array([0.6, 0.9])).tolist() == [1.0, 1.0]  # capped at 1


def test_six_identical_configurations_state_a_false_ordering_at_most_five_percent_of_the_time():
    rng = np.random.default_rng(0)
    y = simulate(rng, [3.0] * 6, seeds=5, tau=2.0)  # seed spread 2x the within spread
    pairs = list(itertools.combinations(range(6), 2))
    differences = np.stack([y[:, a] - y[:, b] for a, b in pairs], axis=1)  # (reps, 15, seeds)
    p = inference.paired_p(differences)
    family_wise = np.mean((inference.holm(p) <= 0.05).any(axis=-1))
    uncorrected = np.mean((p <= 0.05).any(axis=-1))
    assert family_wise <= 0.05
    assert uncorrected > 0.2  # what the correction is for: 15 raw tests state something often


@pytest.mark.parametrize(("seeds", "sd"), [(5, 1.0), (8, 3.0)])
def test_a_difference_of_the_detectable_size_is_found_with_the_stated_power(seeds, sd):
    delta = inference.detectable_difference(sd, seeds)
    rng = np.random.default_rng(seeds)
    differences = rng.normal(delta, sd, size=(REPS, seeds))
    found = np.mean(inference.paired_p(differences) <= 0.05)
    assert found == pytest.approx(0.80, abs=0.025)


def test_pairing_removes_the_shared_seed_effect():
    # a real difference of 1 under a seed spread 4x the arm's own: paired, 8 seeds find it with
    # the power of sigma_diff = sqrt(2); unpaired intervals would need the seed spread's
    rng = np.random.default_rng(3)
    y = simulate(rng, [0.0, 1.0], seeds=8, tau=4.0)
    found = np.mean(inference.paired_p(y[:, 1] - y[:, 0]) <= 0.05)
    assert found == pytest.approx(inference.paired_power(1.0, np.sqrt(2.0), 8), abs=0.03)


def test_identical_differences_are_decided_by_their_sign():
    assert inference.paired_p(np.array([2.0, 2.0, 2.0])) == 0.0
    assert inference.paired_p(np.zeros(3)) == 1.0
    assert inference.detectable_difference(1.0, 1) == float("inf")
