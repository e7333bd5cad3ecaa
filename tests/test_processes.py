"""Losses of both processes against closed forms.

Gaussian data x ~ N(0, s^2 I): the optimal eps-predictor is eps* = sigma z / (alpha^2 s^2 + sigma^2)
and its per-dimension error is mse*(lam) = sigmoid(lam + 2 log s), so the reweighted loss with
that predictor is 1/2 ∫ w(lam) mse*(lam) dlam over the log-SNR range, for every schedule.
"""

import math

import pytest
import torch
from scipy import integrate

from diffobj.objectives import schedules
from diffobj.processes import gaussian, masked

RANGE = (-8.0, 8.0)
S = 0.7  # data standard deviation


def optimal_eps(z, level):
    lv = level.expand(z.dim())
    return lv.sigma * z / (lv.alpha**2 * S**2 + lv.sigma**2)


def monte_carlo(loss_fn, *args, batches=40, batch=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.cat([loss_fn(*args, generator=g).loss for _ in range(batches)])
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


def quadrature(weighting, log_snr_range=RANGE):
    def integrand(lam):
        x = torch.tensor([lam], dtype=torch.float64)
        level = schedules.Level(x, x, x, x, x, x)
        return 0.5 * weighting(level).item() / (1 + math.exp(-(lam + 2 * math.log(S))))

    return integrate.quad(integrand, *log_snr_range, limit=200)[0]


@pytest.mark.parametrize("schedule_name", ["vp_cosine", "rectified_flow", "vp_linear"])
@pytest.mark.parametrize("weighting_name", ["elbo", "sigmoid", "fm", "iddpm"])
def test_gaussian_loss_with_optimal_predictor_matches_quadrature(
    schedule_library, weighting_library, schedule_name, weighting_name
):
    s = schedules.build(schedule_name, schedule_library[schedule_name], RANGE)
    w = weighting_library[weighting_name]
    x = torch.randn(4096, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * S
    mean, stderr = monte_carlo(gaussian.weighted_loss, optimal_eps, x, s, w)
    assert abs(mean - quadrature(w)) < 4 * stderr + 1e-4


def test_gaussian_elbo_is_the_same_for_two_schedules_with_the_same_endpoints(
    schedule_library, weighting_library
):
    x = torch.randn(4096, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * S
    results = [
        monte_carlo(
            gaussian.weighted_loss,
            optimal_eps,
            x,
            schedules.build(n, schedule_library[n], RANGE),
            weighting_library["elbo"],
            seed=3,
        )
        for n in ("vp_cosine", "rectified_flow")
    ]
    (m1, e1), (m2, e2) = results
    assert abs(m1 - m2) < 4 * math.hypot(e1, e2)


def test_rectified_flow_with_fm_weighting_is_the_v_loss(schedule_library, weighting_library):
    s = schedules.build("rectified_flow", schedule_library["rectified_flow"], RANGE)
    x = torch.randn(256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    seen = {}

    def predictor(z, level):
        seen["z"], seen["level"] = z, level
        return 0.3 * z + 0.1

    terms = gaussian.weighted_loss(
        predictor, x, s, weighting_library["fm"], torch.Generator().manual_seed(5)
    )
    z, level = seen["z"], seen["level"].expand(2)
    eps = (z - level.alpha * x) / level.sigma
    v_hat = (predictor(z, level) - z) / level.alpha  # eps_hat = z + (1 - t) v_hat
    v_loss = ((eps - x) - v_hat).square().mean(1)
    t0, t1 = s.t_range
    assert torch.allclose(terms.loss, (t1 - t0) * v_loss, rtol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "F"])
def test_every_parameterisation_recovers_the_true_noise(schedule_library, prediction):
    s = schedules.build("vp_cosine", schedule_library["vp_cosine"], RANGE)
    level = s.level(torch.linspace(0.1, 0.9, 5, dtype=torch.float64))
    lv = level.expand(2)
    x = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    z = lv.alpha * x + lv.sigma * eps
    sd = 0.5
    sigma_hat = lv.sigma / lv.alpha
    targets = {
        "eps": eps,
        "x0": x,
        "v": lv.alpha * eps - lv.sigma * x,
        # EDM: D = c_skip x̂ + c_out F with x̂ = z / alpha, so F = (x - c_skip x̂) / c_out
        "F": (x - sd**2 / (sigma_hat**2 + sd**2) * z / lv.alpha)
        / (sigma_hat * sd / torch.sqrt(sigma_hat**2 + sd**2)),
    }

    class Oracle(torch.nn.Module):
        def forward(self, z_in, log_snr):
            return targets[prediction]

    denoiser = gaussian.Denoiser(Oracle(), prediction, sigma_data=sd)
    assert torch.allclose(denoiser(z, level), eps, atol=1e-10)


def test_masked_elbo_of_a_uniform_model_is_log_vocab_per_dimension(
    schedule_library, weighting_library
):
    s = schedules.build("md4_cosine", schedule_library["md4_cosine"], (-9.21, 9.21))
    x = torch.randint(0, masked.VOCAB, (4096, 1, 4, 4), generator=torch.Generator().manual_seed(6))

    def uniform(z, level):
        return torch.zeros(z.shape[0], masked.VOCAB, *z.shape[1:])

    mean, stderr = monte_carlo(
        masked.weighted_loss, uniform, x, s, weighting_library["elbo"], batches=10
    )
    # ∫ (-alpha'/(1-alpha)) (1-alpha) log V dt = (alpha(t0) - alpha(t1)) log V
    t0, t1 = s.t_range
    alpha = s.alpha(torch.tensor([t0, t1], dtype=torch.float64))
    assert abs(mean - (alpha[0] - alpha[1]).item() * math.log(256)) < 4 * stderr + 1e-4


def test_masked_simple_weighting_is_plain_cross_entropy_on_masked_tokens(
    schedule_library, weighting_library
):
    s = schedules.build("md4_cosine", schedule_library["md4_cosine"], (-9.21, 9.21))
    x = torch.randint(0, masked.VOCAB, (4096, 1, 4, 4), generator=torch.Generator().manual_seed(7))

    def uniform(z, level):
        return torch.zeros(z.shape[0], masked.VOCAB, *z.shape[1:])

    mean, stderr = monte_carlo(
        masked.weighted_loss, uniform, x, s, weighting_library["simple"], batches=10
    )
    t0, t1 = s.t_range
    masked_share = integrate.quad(
        lambda t: 1 - s.alpha(torch.tensor(t, dtype=torch.float64)).item(), t0, t1
    )[0]
    assert abs(mean - masked_share * math.log(256)) < 4 * stderr + 1e-4
