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
    from diffobj import schedules

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
