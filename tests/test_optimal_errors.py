"""Honest standard errors of the subset estimators, and cDOL's default C.

Queries of one batch share one random subset, so they are not independent: the standard error
is that of the mean over independent subsets (batch means). Checked three ways: the cluster
formula against its closed form; on synthetic grouped values whose true spread is known; and
by coverage of the exact optimal loss over 40 seeds on tiny data (SNIS and cDOL at its
default C), where the "exact" value is the exact estimator with 100k queries (its own error
is ~1% of the estimators' spread).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffobj.optimal.estimators import default_c
from diffobj.optimal.gaussian_posterior import gaussian_query_losses
from diffobj.optimal.queries import MIN_SUBSETS, mean_and_stderr, query_groups

SEEDS = 40


def test_batch_means_stderr_is_the_std_of_the_group_means_for_equal_groups():
    values = torch.randn(12 * 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = torch.arange(60) // 5
    mean, stderr = mean_and_stderr(values, groups)
    means = values.reshape(12, 5).mean(1)
    assert mean == pytest.approx(float(values.mean()))
    assert stderr == pytest.approx(float(means.std()) / math.sqrt(12))


def test_batch_means_stderr_matches_the_spread_when_a_group_shares_an_effect():
    # value = group effect (sd 1) + own noise (sd 1), 16 groups of 64: Var(mean) = 1/16 + 1/1024
    g = torch.Generator().manual_seed(1)
    groups = torch.arange(16 * 64) // 64
    means, batch_se, query_se = [], [], []
    for _ in range(400):
        values = torch.randn(16, generator=g, dtype=torch.float64)[groups]
        values = values + torch.randn(len(groups), generator=g, dtype=torch.float64)
        m, se = mean_and_stderr(values, groups)
        means.append(m)
        batch_se.append(se)
        query_se.append(mean_and_stderr(values)[1])
    truth = math.sqrt(1 / 16 + 1 / 1024)
    assert float(torch.tensor(means).std()) == pytest.approx(truth, rel=0.1)
    assert sum(batch_se) / 400 == pytest.approx(truth, rel=0.1)
    assert sum(query_se) / 400 < truth / 4  # the per-query formula: far too small


def test_subset_estimators_draw_at_least_32_subsets_by_default():
    groups = query_groups(4096, "snis", None, "cpu")
    assert int(groups.max()) + 1 >= MIN_SUBSETS == 32
    assert query_groups(4096, "exact", None, "cpu") is None
    assert int(query_groups(4096, "cdol", 1024, "cpu").max()) + 1 == 4  # as given


def tiny_data(n: int = 32, dim: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, dim, generator=g) * 2 - 1
    noise = 0.3 * torch.randn(n, dim, generator=g)
    return (centres[torch.arange(n) % 4] + noise).clamp(-1, 1).float()


def vp(lam: float) -> tuple[float, float]:
    return math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))


@pytest.mark.parametrize(
    ("estimator", "lam"), [("snis", -1.0), ("snis", 1.0), ("cdol", 1.0), ("cdol", 3.0)]
)
def test_the_95_percent_interval_covers_the_exact_value(estimator, lam):
    # 32 subsets of L = 28 (of N = 32) points, 32 queries each: a batch shares its subset
    x, subset, batch, queries = tiny_data(), 28, 32, 1024
    alpha, sigma = vp(lam)
    exact = gaussian_query_losses(x, alpha, sigma, 100_000, seed=999).mean().item()
    groups = query_groups(queries, estimator, batch, "cpu")
    covered = 0
    for seed in range(SEEDS):
        losses = gaussian_query_losses(
            x,
            alpha,
            sigma,
            queries,
            seed=seed,
            estimator=estimator,
            subset=subset,
            batch_size=batch,
        )
        mean, stderr = mean_and_stderr(losses, groups)
        covered += abs(mean - exact) < 1.96 * stderr
    assert 0.85 <= covered / SEEDS <= 0.99, covered


def test_the_default_c_limits():
    # about 2N/L for L << N (the measured best, benchmarks/cdol_c.py); exactly 1 at L = N
    assert default_c(50_000, 64) == pytest.approx(2 * 50_000 / 64, rel=0.02)
    assert default_c(1438, 1438) == 1.0


def test_cdol_with_the_whole_set_and_the_default_c_is_exact():
    # L = N: the L - 1 others are all the others and C = 1: query by query the exact estimator
    x = tiny_data()
    alpha, sigma = vp(1.0)
    kw = dict(seed=3, batch_size=64)
    exact = gaussian_query_losses(x, alpha, sigma, 256, **kw)
    cdol = gaussian_query_losses(x, alpha, sigma, 256, estimator="cdol", subset=len(x), **kw)
    torch.testing.assert_close(cdol, exact, rtol=1e-5, atol=1e-12)


def test_on_tiny_data_the_default_c_is_between_the_ratio_and_4n_over_l():
    """With L close to N (24 of 32) the weights are hardly skewed: the plain ratio
    (N - 1)/(L - 1) is unbiased (mean over 40 seeds within 3 standard errors of exact), the
    paper's 4N/L divides the source weight by far too much (J* over-estimated), and the
    default, tuned for L << N, sits in between: a known, measured cost of one formula."""
    x, subset, queries = tiny_data(), 24, 1024
    n = len(x)
    alpha, sigma = vp(1.0)
    exact = gaussian_query_losses(x, alpha, sigma, 100_000, seed=999).mean().item()

    def z_score(C: float | None) -> float:
        means = torch.tensor(
            [
                gaussian_query_losses(
                    x, alpha, sigma, queries, seed=s, estimator="cdol", subset=subset, C=C
                )
                .mean()
                .item()
                for s in range(SEEDS)
            ]
        )
        return (float(means.mean()) - exact) / (float(means.std()) / math.sqrt(SEEDS))

    ratio, default, paper = z_score((n - 1) / (subset - 1)), z_score(None), z_score(4 * n / subset)
    assert abs(ratio) < 3 and 3 < default < paper / 2, (ratio, default, paper)
