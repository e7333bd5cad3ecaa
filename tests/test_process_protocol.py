"""Every process module meets the protocol the library looks up (diffobj.processes.get), and
its members agree with closed forms: the ELBO's weight per unit log-SNR is the per-time weight
times dt/dlam, the prior KL is the Gaussian KL (torch.distributions) or alpha log V, and the
data conversion is exact on all 256 pixel values."""

import math

import numpy as np
import pytest
import torch

from diffobj import processes
from diffobj.errors import UserError

# the factor weighted_loss puts on elbo_time_weight: 1/2 ||eps - eps_hat||^2 vs the masked CE
TIME_FACTOR = {"gaussian": 0.5, "masked": 1.0}
SCHEDULE = {"gaussian": "vp_cosine", "masked": "md4_cosine"}
RANGE = {"gaussian": (-10.0, 10.0), "masked": (-9.21, 9.21)}


@pytest.mark.parametrize("kind", processes.KINDS)
def test_each_kind_has_a_module_with_the_protocol(kind):
    process = processes.get(kind)
    assert process.name == kind
    for member in processes.Process.__annotations__:
        assert hasattr(process, member), member
    for method in ("model_input", "to_uint8", "elbo_weight", "error", "prior_kl"):
        assert callable(getattr(process, method))


def test_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(UserError, match=r"unknown process kind 'uniform' \(known: \['gaussian', "):
        processes.get("uniform")


@pytest.mark.parametrize("kind", processes.KINDS)
def test_elbo_weight_per_log_snr_is_the_time_weight_over_dlam_dt(schedule_library, kind):
    from diffobj.objectives import schedules

    schedule = schedules.build(SCHEDULE[kind], schedule_library[SCHEDULE[kind]], RANGE[kind], "lib")
    level = schedule.level(torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    process = processes.get(kind)
    per_time = TIME_FACTOR[kind] * process.elbo_time_weight(level)
    per_log_snr = process.elbo_weight(level.log_snr) * -level.dlog_snr_dt
    torch.testing.assert_close(per_time, per_log_snr, rtol=1e-9, atol=0)
    # the array form (figures, tables) is the tensor form
    np.testing.assert_allclose(
        process.elbo_weight(level.log_snr.numpy()), process.elbo_weight(level.log_snr).numpy()
    )


def test_gaussian_prior_kl_is_the_kl_of_normals():
    data = torch.linspace(-1, 1, 101, dtype=torch.float64).reshape(1, -1)
    alpha, sigma = 0.3, math.sqrt(1 - 0.09)
    q = torch.distributions.Normal(alpha * data, sigma)
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    assert processes.get("gaussian").prior_kl(data, alpha, sigma) == pytest.approx(
        float(expected), rel=1e-12
    )


def test_masked_prior_kl_is_alpha_log_vocab():
    # q keeps x w.p. alpha, else masks; the prior keeps a uniform token w.p. alpha, else masks:
    # KL = alpha log(alpha / (alpha / V)) + (1 - alpha) log 1
    alpha = 0.01
    assert processes.get("masked").prior_kl(torch.zeros(1, 4), alpha, 1 - alpha) == pytest.approx(
        alpha * math.log(256), rel=1e-12
    )


@pytest.mark.parametrize("kind", processes.KINDS)
def test_data_conversion_round_trips_every_pixel_value(kind):
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    process = processes.get(kind)
    x = process.model_input(u8)
    assert x.dtype == process.input_dtype
    assert torch.equal(process.to_uint8(x), u8)
    if process.continuous:  # x = u8 / 127.5 - 1 spans [-1, 1]
        assert (float(x.min()), float(x.max())) == (-1.0, 1.0)


@pytest.mark.parametrize("kind", processes.KINDS)
def test_the_path_inverts_the_log_snr_and_its_derivative_is_the_difference_quotient(kind):
    lam = torch.linspace(-9, 9, 37, dtype=torch.float64)
    process = processes.get(kind)
    alpha, sigma = process.alpha_of_log_snr(lam), process.sigma_of_log_snr(lam)
    torch.testing.assert_close(process.sigma_of_alpha(alpha), sigma, rtol=1e-6, atol=1e-12)
    if process.continuous:  # lam = log(alpha^2 / sigma^2)
        torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam)
    else:  # lam = log(alpha / (1 - alpha)): the odds of keeping a token
        torch.testing.assert_close(torch.log(alpha / sigma), lam)
    h = 1e-6
    quotient = (process.alpha_of_log_snr(lam + h) - process.alpha_of_log_snr(lam - h)) / (2 * h)
    torch.testing.assert_close(process.dalpha_dlog_snr(alpha), quotient, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", processes.KINDS)
def test_log_snr_of_alpha_inverts_the_path(kind):
    lam = torch.linspace(-9, 9, 37, dtype=torch.float64)
    process = processes.get(kind)
    torch.testing.assert_close(process.log_snr_of_alpha(process.alpha_of_log_snr(lam)), lam)


@pytest.mark.parametrize("kind", processes.KINDS)
def test_optimal_data_is_the_flattened_model_input(kind):
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    process = processes.get(kind)
    data = process.optimal_data(images)
    expected = process.model_input(torch.from_numpy(images)).reshape(2, -1)
    assert data.shape == (2, 192) and torch.equal(data.to(expected.dtype), expected)


def test_gaussian_optimal_loss_of_two_points_is_the_tanh_posterior_error():
    # x in {-1, +1} (D = 1): E[x | x̂] = tanh(x̂ / s²), x̂ = x + s eps, s² = e^-lam; by symmetry
    # the x0 loss is E_eps (1 - tanh((1 + s eps) / s²))², by Gauss-Hermite quadrature
    lam, queries = 0.5, 20_000
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    s = sigma / alpha
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    x0 = float((weights * (1 - np.tanh((1 + s * nodes) / s**2)) ** 2).sum() / weights.sum())
    data = torch.tensor([[-1.0], [1.0]])
    options = dict(estimator="exact", subset=None, C=None, seed=3, batch_size=None)
    got = processes.get("gaussian").optimal_loss(
        data, lam, alpha, sigma, queries, **options, progress=False, desc=""
    )
    assert abs(got["optimal_loss_x0"] - x0) < 4 * got["stderr_x0"]
    assert got["optimal_loss"] == got["optimal_loss_x0"] * math.exp(lam)
    assert got["stderr"] == got["stderr_x0"] * math.exp(lam)
    assert got["sigma_ve"] == math.exp(-lam / 2)


def test_masked_optimal_loss_is_the_consistent_sets_token_frequencies():
    # points (0,0), (0,0), (1,1): a kept token leaves only points with the source's values
    # (loss 0); with none kept (prob (1 - alpha)^2) a position's values have frequencies
    # 2/3 and 1/3, so sources 0 and 1 lose log(3/2) per dim and source 2 log 3
    alpha, queries = 0.4, 30_000
    data = torch.tensor([[0, 0], [0, 0], [1, 1]], dtype=torch.uint8)
    truth = (1 - alpha) ** 2 * (2 * math.log(3 / 2) + math.log(3)) / 3
    options = dict(estimator="exact", subset=None, C=None, seed=5, batch_size=None)
    got = processes.get("masked").optimal_loss(
        data, 0.0, alpha, 1 - alpha, queries, **options, progress=False, desc=""
    )
    assert abs(got["optimal_loss"] - truth) < 4 * got["stderr"]
    assert all(math.isnan(got[c]) for c in ("sigma_ve", "optimal_loss_x0", "stderr_x0"))


def test_gaussian_decoder_of_two_points_is_the_softplus_of_their_logit_gap():
    # x in {-1, +1}: -log π_src(x̂) = log(1 + exp(-2 x_src x̂ / s²)), x̂ = x_src + s eps
    lam, src = 1.0, torch.tensor([0, 1, 1, 0, 1])
    data = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    got = processes.get("gaussian").decoder_nats(
        data, src, lam, 0.0, torch.Generator().manual_seed(2)
    )
    eps = torch.randn((5, 1), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = math.exp(-lam / 2)
    x_src = data[src]
    x_hat = x_src + s * eps
    expected = torch.nn.functional.softplus(-2 * x_src * x_hat / s**2).squeeze(1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_masked_decoder_is_the_log_size_of_the_consistent_set():
    # points (0,0), (0,0), (1,1): any kept token leaves the source's copies (2, 2, 1), none 3
    alpha, src = 0.3, torch.tensor([0, 1, 2] * 20)
    data = torch.tensor([[0, 0], [0, 0], [1, 1]])
    got = processes.get("masked").decoder_nats(
        data, src, 0.0, alpha, torch.Generator().manual_seed(4)
    )
    u = torch.rand((60, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    copies = torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)[src]
    expected = torch.where((u < alpha).any(1), copies, torch.full_like(copies, 3.0)).log()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_noise_axis_is_sigma_ve_or_the_keep_probability():
    lam = 0.7
    gaussian, masked = (processes.get(k).loss_axes for k in ("gaussian", "masked"))
    assert gaussian.noise_of_log_snr(lam) == pytest.approx(math.exp(-lam / 2), rel=1e-15)
    assert masked.noise_of_log_snr(lam) == pytest.approx(1 / (1 + math.exp(-lam)), rel=1e-15)
    # the columns the figure reads are the optimal-loss table's
    from diffobj.optimal.table import TABLE_COLUMNS

    for axes in (gaussian, masked):
        assert {axes.noise_column, axes.rising_column} <= set(TABLE_COLUMNS)
