"""The weighting study's statistics, checked against closed forms and brute force."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from diffobj import study
from diffobj.metrics.fid import bootstrap_distances
from diffobj.metrics.frechet import FeatureMoments, Statistics, frechet_distance


def test_two_seeds_without_within_run_noise_give_the_range_of_the_two_values():
    # resampling two seeds gives {a, a}, {a, b}, {b, b}: the mean is a, (a+b)/2 or b with
    # probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5% points are a and b
    rng = np.random.default_rng(0)
    lo, hi = study.two_level_interval([np.array([3.0]), np.array([5.0])], rng)
    assert (lo, hi) == (3.0, 5.0)


def test_one_seed_interval_is_the_percentile_interval_of_its_replicates():
    rng = np.random.default_rng(1)
    replicates = rng.normal(10.0, 2.0, size=5000)
    lo, hi = study.two_level_interval([replicates], np.random.default_rng(2), draws=200_000)
    assert lo == pytest.approx(10 - 1.96 * 2, abs=0.1)
    assert hi == pytest.approx(10 + 1.96 * 2, abs=0.1)


def test_bootstrap_of_a_mean_has_the_standard_error_of_the_mean():
    rng = np.random.default_rng(3)
    values = rng.exponential(1.0, size=400)
    means = study.bootstrap_means(values, 20_000, rng)
    assert means.std() == pytest.approx(values.std() / math.sqrt(len(values)), rel=0.05)


def _study(rows):
    frame = pl.DataFrame(rows)
    for metric in study.METRICS:
        for suffix in ("", "_lo", "_hi"):
            if metric + suffix not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.Float64).alias(metric + suffix))
    return frame


def _config(weighting, fd, lo, hi, kind="masked"):
    return {
        "kind": kind,
        "schedule": "md4_cosine",
        "weighting": weighting,
        "model": "m",
        "monotonic": True,
        "n_seeds": 2,
        "fd_classifier": fd,
        "fd_classifier_lo": lo,
        "fd_classifier_hi": hi,
    }


def test_orderings_need_non_overlapping_intervals_within_one_process():
    frame = _study(
        [
            _config("simple", 8.0, 7.0, 9.0),
            _config("elbo", 20.0, 15.0, 25.0),
            _config("sigmoid", 14.0, 8.5, 16.0),  # overlaps both
            _config("elbo", 1.0, 0.5, 1.5, kind="gaussian"),  # another process: never compared
        ]
    )
    pairs = [(a["weighting"], b["weighting"]) for a, b in study.orderings(frame, "fd_classifier")]
    assert pairs == [("simple", "elbo")]


@pytest.mark.parametrize(
    ("simple", "elbo", "expected"),
    [
        ((8.0, 7.0, 9.0), (20.0, 15.0, 25.0), "supported"),
        ((20.0, 15.0, 25.0), (8.0, 7.0, 9.0), "contradicted"),
        ((10.0, 7.0, 16.0), (14.0, 12.0, 18.0), "not resolved"),
    ],
)
def test_a_paper_claim_is_judged_by_the_intervals(simple, elbo, expected):
    frame = _study([_config("simple", *simple), _config("elbo", *elbo)])
    claim = study.Claim("masked", "sample_quality", "simple", "elbo", "test")
    assert study.verdict(frame, claim) == expected
    missing = study.Claim("masked", "sample_quality", "simple", "iddpm", "test")
    assert study.verdict(frame, missing) is None  # a side that was not run: no statement


def test_the_report_states_no_ordering_the_intervals_do_not_support():
    frame = _study([_config("simple", 10.0, 7.0, 16.0), _config("elbo", 14.0, 12.0, 18.0)])
    runs = pl.DataFrame({"run_id": ["a"]})
    text = study.markdown(frame, None, runs, {"git_commit": "abc"})
    assert "- none" in text
    assert "simple better than elbo (Shi & Titsias 2025, ImageNet 64 FID): **not resolved**" in text
    assert "git_commit: abc" in text


def test_xu_et_al_claims_are_judged_within_each_base_objectives_schedule():
    # xu_optimal on the FM arm's schedule against fm there; the EDM arm's xu_optimal (another
    # schedule) is not compared with fm
    def arm(weighting, schedule, fd, lo, hi):
        return _config(weighting, fd, lo, hi, kind="gaussian") | {"schedule": schedule}

    frame = _study(
        [
            arm("fm", "rectified_flow", 20.0, 18.0, 22.0),
            arm("xu_optimal", "rectified_flow", 10.0, 9.0, 11.0),
            arm("xu_optimal", "edm_lognormal", 30.0, 29.0, 31.0),
        ]
    )
    text = study.markdown(frame, None, pl.DataFrame({"run_id": ["a"]}), {})
    assert (
        "xu_optimal better than fm (Xu et al. 2025, CIFAR-10 FID (FM 2.07 -> 1.77)): **supported**"
        in text
    )
    assert "better than edm" not in text  # no EDM arm in this grid


def test_elbo_gap_integrates_with_the_elbo_weight_of_each_process():
    lam = np.linspace(-5.0, 7.0, 2001)
    constant = 0.3
    frame = pl.DataFrame(
        {
            "run_id": ["g"] * len(lam) + ["m"] * len(lam),
            "kind": ["gaussian"] * len(lam) + ["masked"] * len(lam),
            "log_snr": np.concatenate([lam, lam]),
            "gap": np.full(2 * len(lam), constant),
        }
    )
    got = dict(study.elbo_gap(frame).iter_rows())
    # Gaussian: 1/2 ∫ g dλ; masked: ∫ sigmoid(λ) g dλ = g [softplus(λ)] (nats -> bits)
    assert got["g"] == pytest.approx(0.5 * constant * 12.0 / math.log(2), rel=1e-9)
    softplus = np.log1p(np.exp(7.0)) - np.log1p(np.exp(-5.0))
    assert got["m"] == pytest.approx(constant * softplus / math.log(2), rel=1e-6)


def test_a_bootstrap_replicate_equals_the_distance_of_the_explicitly_resampled_rows():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 6, generator=g, dtype=torch.float64)
    ref = Statistics(np.zeros(6), np.eye(6), {"n": 10})
    (replicate,) = bootstrap_distances(features, ref, 1, seed=7, device=torch.device("cpu"))
    # the same draw as bootstrap_distances makes: n indices from a generator seeded with 7
    idx = torch.randint(0, 300, (300,), generator=torch.Generator().manual_seed(7))
    moments = FeatureMoments(6)
    moments.update(features[idx])
    assert replicate == pytest.approx(frechet_distance(moments.statistics(), ref), rel=1e-10)


def test_configurations_average_seeds_and_bound_them():
    runs = [
        ("a0", "simple", 0, 8.0, 2.0),
        ("a1", "simple", 1, 10.0, 2.2),
        ("b0", "elbo", 0, 30.0, 3.0),
    ]
    evaluation = pl.DataFrame(
        {
            "run_id": [r[0] for r in runs],
            "kind": "masked",
            "schedule": "md4_cosine",
            "weighting": [r[1] for r in runs],
            "model": "m",
            "seed": [r[2] for r in runs],
            "monotonic": True,
            "fd_classifier": [r[3] for r in runs],
            "fid": pl.Series([None] * 3, dtype=pl.Float64),
            "nll_bpd": [r[4] for r in runs],
        }
    )
    # no within-run replicates: two seeds give [min, max], one seed a point
    result = study.configurations(evaluation, {}).sort("weighting", descending=True)
    simple, elbo = result.iter_rows(named=True)
    assert (simple["n_seeds"], simple["fd_classifier"]) == (2, 9.0)
    assert (simple["fd_classifier_lo"], simple["fd_classifier_hi"]) == (8.0, 10.0)
    assert (simple["nll_bpd_lo"], simple["nll_bpd_hi"]) == (2.0, 2.2)
    assert (elbo["n_seeds"], elbo["fd_classifier_lo"], elbo["fd_classifier_hi"]) == (1, 30.0, 30.0)
    assert simple["fid"] is None


def test_a_fid_interval_contains_its_estimate_although_resampling_inflates_the_distance():
    # 100 samples of a 16-dimensional standard normal against its own exact moments: the FD of
    # a resample (repeated rows, fewer distinct points) is larger than the sample's own, by more
    # than the replicates' spread. Uncentred, every replicate lies above the estimate.
    g = torch.Generator().manual_seed(0)
    ref = Statistics(np.zeros(16), np.eye(16), {"n": 10**6})
    evaluation, replicates = [], {}
    for seed in (0, 1):
        features = torch.randn(100, 16, generator=g, dtype=torch.float64)
        moments = FeatureMoments(16)
        moments.update(features)
        fd = frechet_distance(moments.statistics(), ref)
        replicates[f"r{seed}"] = np.array(
            bootstrap_distances(features, ref, 200, seed=seed, device=torch.device("cpu"))
        )
        assert replicates[f"r{seed}"].min() > fd  # the bias the interval must not inherit
        evaluation.append(
            {
                "run_id": f"r{seed}",
                "kind": "gaussian",
                "schedule": "s",
                "weighting": "w",
                "model": "m",
                "seed": seed,
                "monotonic": True,
                "fd_classifier": fd,
                "fid": None,
                "nll_bpd": 1.0,
            }
        )
    frame = pl.DataFrame(evaluation, schema_overrides={"fid": pl.Float64})
    (row,) = study.configurations(frame, {"fd_classifier": replicates}).iter_rows(named=True)
    assert row["fd_classifier_lo"] < row["fd_classifier"] < row["fd_classifier_hi"]


def test_the_fd_bootstrap_spread_is_the_spread_over_independent_sample_sets():
    # samples N(mu, 1.2^2 I), |mu|^2 = 5, against N(0, I): the FD is a smooth function of the
    # moments there, so the bootstrap's spread of one sample set estimates the spread of the FD
    # over fresh sample sets
    d, n = 16, 500
    ref = Statistics(np.zeros(d), np.eye(d), {"n": 10**6})
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = math.sqrt(5)
    g = torch.Generator().manual_seed(0)

    def draw() -> torch.Tensor:
        return torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + mu

    def fd(features: torch.Tensor) -> float:
        moments = FeatureMoments(d)
        moments.update(features)
        return frechet_distance(moments.statistics(), ref)

    fresh = np.std([fd(draw()) for _ in range(200)])
    replicates = bootstrap_distances(draw(), ref, 400, seed=1, device=torch.device("cpu"))
    assert np.std(replicates) == pytest.approx(fresh, rel=0.25)
