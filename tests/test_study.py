"""The weighting study's statistics, checked against closed forms and brute force."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from diffobj.analysis import study
from diffobj.metrics.fid import bootstrap_distances
from diffobj.metrics.frechet import FeatureMoments, Statistics, frechet_distance


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


def _evaluation(values: dict[tuple[str, str], list[float]], kind="masked") -> pl.DataFrame:
    """An evaluation table: ``values[(weighting, schedule)]`` is the classifier FD per seed."""
    rows = [
        {
            "run_id": f"{w}-{sch}-s{seed}",
            "kind": kind,
            "schedule": sch,
            "weighting": w,
            "model": "m",
            "seed": seed,
            "monotonic": True,
            "fd_classifier": fd,
            "fid": None,
            "nll_bpd": 1.0 + 0.01 * seed,
        }
        for (w, sch), fds in values.items()
        for seed, fd in enumerate(fds)
    ]
    return pl.DataFrame(rows, schema_overrides={"fid": pl.Float64})


def test_a_configuration_is_its_mean_over_seeds_with_the_t_interval():
    frame = _evaluation({("simple", "c"): [1.0, 2.0, 3.0, 4.0, 5.0], ("elbo", "c"): [7.0]})
    simple, elbo = (
        study.configurations(frame).sort("weighting", descending=True).iter_rows(named=True)
    )
    # t(0.975, 4) sqrt(2.5 / 5) = 1.963243
    assert simple["fd_classifier"] == 3.0
    assert (simple["fd_classifier_lo"], simple["fd_classifier_hi"]) == pytest.approx(
        (3 - 1.963243, 3 + 1.963243), abs=1e-6
    )
    assert (elbo["n_seeds"], elbo["fd_classifier_lo"]) == (1, None)  # one seed: no interval
    assert simple["fid"] is None


def test_a_claim_is_decided_by_the_paired_differences_not_by_overlapping_intervals():
    # seed effects of +-10 make the two arms' intervals overlap widely, but simple is below elbo
    # by 1 to 1.4 on every seed: the paired test finds it
    seed_effect = [0.0, 10.0, -10.0, 5.0, -5.0]
    elbo = [20.0 + b for b in seed_effect]
    simple = [e - d for e, d in zip(elbo, [1.0, 1.2, 1.4, 1.1, 1.3], strict=True)]
    frame = _evaluation({("simple", "c"): simple, ("elbo", "c"): elbo})
    configs = study.configurations(frame).sort("weighting")
    assert configs["fd_classifier_hi"][0] > configs["fd_classifier_lo"][1]  # intervals overlap
    (row,) = study.claims(frame)
    assert row["claim"].better == "simple"
    assert row["effect"] == pytest.approx(-1.2)
    assert row["p_holm"] == row["p"]  # the only claim of the family
    assert row["verdict"] == "supported"
    flipped = study.claims(_evaluation({("simple", "c"): elbo, ("elbo", "c"): simple}))
    assert flipped[0]["verdict"] == "contradicted"


def test_an_unresolved_claim_reports_the_difference_its_design_would_detect():
    frame = _evaluation({("simple", "c"): [10.0, 12.0, 9.0], ("elbo", "c"): [11.0, 10.0, 10.5]})
    (row,) = study.claims(frame)
    assert row["verdict"] == "not resolved"
    assert row["mdd"] > abs(row["effect"])
    text = study.markdown(
        study.configurations(frame), frame, None, pl.DataFrame({"run_id": []}), {}
    )
    assert "**not resolved**" in text
    assert "0 differ" in text  # no ordering stated without a corrected test behind it


def test_the_claims_are_one_holm_family_and_each_schedule_is_its_own_test():
    # simple < elbo on two schedules, sigmoid < elbo on one: three tests in one family
    frame = _evaluation(
        {
            ("elbo", "c"): [5.0, 6.0, 7.0, 8.0, 9.0],
            ("simple", "c"): [4.0, 5.1, 5.9, 7.2, 7.9],
            ("sigmoid", "c"): [5.5, 5.0, 7.9, 7.1, 9.5],
            ("elbo", "d"): [5.0, 6.0, 7.0],
            ("simple", "d"): [3.0, 4.0, 5.5],
        }
    )
    rows = study.claims(frame)
    assert [(r["claim"].better, r["schedule"]) for r in rows] == [
        ("simple", "c"),
        ("simple", "d"),
        ("sigmoid", "c"),
    ]
    raw = np.array([r["p"] for r in rows])
    assert [r["p_holm"] for r in rows] == pytest.approx(sorted_holm(raw))


def sorted_holm(p: np.ndarray) -> list[float]:
    """Holm by its definition: the i-th smallest p times (m - i + 1), made non-decreasing."""
    order = np.argsort(p)
    adjusted, running = np.empty(len(p)), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        adjusted[j] = running
    return adjusted.tolist()


def test_a_tables_pairs_are_one_family_within_each_process():
    rng = np.random.default_rng(0)
    values = {(f"w{i}", "c"): list(rng.normal(3.0, 1.0, size=5)) for i in range(4)}
    frame = pl.concat([_evaluation(values), _evaluation({("w0", "c"): [1.0] * 5}, kind="gaussian")])
    rows = study.comparisons(frame, "fd_classifier")
    assert len(rows) == 6  # 4 masked arms: 6 pairs; the Gaussian arm is compared with none
    assert [r["p_holm"] for r in rows] == pytest.approx(
        sorted_holm(np.array([r["p"] for r in rows]))
    )


def test_xu_et_al_claims_pair_each_base_objective_on_its_own_schedule():
    frame = _evaluation(
        {
            ("fm", "rectified_flow"): [20.0, 21.0, 19.0],
            ("xu_optimal", "rectified_flow"): [10.0, 11.5, 9.2],
            ("xu_optimal", "edm_lognormal"): [30.0, 29.0, 31.0],
        },
        kind="gaussian",
    )
    rows = study.claims(frame)
    assert [(r["claim"].worse, r["schedule"]) for r in rows] == [("fm", "rectified_flow")]
    assert rows[0]["verdict"] == "supported"
