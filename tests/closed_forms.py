"""Closed forms of the library's weightings and schedules, written from the papers' recipes.

Independent of config/*.yaml on purpose: each formula is derived here (the derivation in its
docstring) from the training recipe of its paper (docs/science.md §1-2), never copied from the
library's expression, so a wrong library entry disagrees with it. numpy float64 throughout.

Conventions (docs/science.md §2.1): L_w = 1/2 ∫ w(lam) E||eps - eps_hat||^2 dlam. A recipe that draws
lam from a density p(lam) and puts a weight c_eps(lam) on the eps-MSE has w = 2 p(lam) c_eps.
Library weightings fix the constant factor as their papers do; each closed form below states
the constant that relates the recipe to the library's normalisation.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

# -- densities of lam for uniform t on two paths ------------------------------------------------


def two_p_cosine(lam: np.ndarray) -> np.ndarray:
    """2 p(lam) for t ~ U on alpha = cos(pi t / 2): t = (2/pi) atan(e^{-lam/2}), so
    |dt/dlam| = (1/pi) e^{-lam/2} / (1 + e^{-lam}) = (1/pi) / (e^{lam/2} + e^{-lam/2})."""
    return (2 / np.pi) / (np.exp(lam / 2) + np.exp(-lam / 2))


def rf_time(lam: np.ndarray) -> np.ndarray:
    """t of the rectified-flow path alpha = 1 - t, sigma = t: e^{lam/2} = (1 - t)/t."""
    return 1 / (1 + np.exp(lam / 2))


def two_p_rectified_flow(lam: np.ndarray) -> np.ndarray:
    """2 p(lam) for t ~ U on the rectified-flow path: dlam/dt = -2 / (t (1 - t))."""
    t = rf_time(lam)
    return t * (1 - t)


# -- weightings as functions of lam -----------------------------------------------------------


def elbo(lam: np.ndarray) -> np.ndarray:
    return np.ones_like(lam)


def sigmoid_b0(lam: np.ndarray) -> np.ndarray:
    """Kingma & Gao's sigmoid(b - lam) at the library's b = 0: 1 / (1 + SNR)."""
    return 1 / (1 + np.exp(lam))


def fm(lam: np.ndarray) -> np.ndarray:
    """Rectified flow, v = eps - x, t ~ U. From z = x + t v: eps = z + (1 - t) v, so
    eps_hat - eps = (1 - t)(v_hat - v) and c_eps = 1/(1 - t)^2; w = t(1-t)/(1-t)^2 = t/(1-t)."""
    t = rf_time(lam)
    return two_p_rectified_flow(lam) / (1 - t) ** 2


def iddpm(lam: np.ndarray) -> np.ndarray:
    """eps-MSE (c_eps = 1) with t ~ U on the cosine path, times pi (the library's constant)."""
    return np.pi * two_p_cosine(lam)


def p2(lam: np.ndarray, k: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    """Choi et al.: eps-MSE weighted by (k + SNR)^{-gamma}, cosine path, t ~ U, times pi."""
    return np.pi * two_p_cosine(lam) / (k + np.exp(lam)) ** gamma


def min_snr(lam: np.ndarray, gamma: float = 5.0) -> np.ndarray:
    """Hang et al.: weight min(SNR, gamma) on the x0-MSE; ||x - x_hat||^2 = ||eps - eps_hat||^2 /
    SNR (x_hat = (z - sigma eps_hat)/alpha), so c_eps = min(SNR, gamma)/SNR; cosine, t ~ U, x pi."""
    snr = np.exp(lam)
    return np.pi * two_p_cosine(lam) * np.minimum(snr, gamma) / snr


def indi(lam: np.ndarray) -> np.ndarray:
    """InDI (Delbracio & Milanfar) as Kingma & Gao tabulate it: x0-MSE with t ~ U on the path
    z = (1 - t) x + t eps. c_eps = sigma^2/alpha^2 = t^2/(1 - t)^2, so w = 2p c_eps = t^3/(1 - t);
    Kingma & Gao's e^{-lam} sech^2(lam/4) is 4 times that."""
    t = rf_time(lam)
    return 4 * two_p_rectified_flow(lam) * t**2 / (1 - t) ** 2


EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5


def edm(lam: np.ndarray) -> np.ndarray:
    """EDM (Karras et al.): ln sigma ~ N(P_mean = -1.2, P_std = 1.2), loss weight
    (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 on the x-MSE ||D(x + sigma n) - x||^2.

    - lam = -2 ln sigma, so p(lam) = N(-lam/2; P_mean, P_std) * |d ln sigma / dlam| = N(...) / 2.
    - x_hat = z - sigma eps_hat in the VE view, so the x-MSE is sigma^2 times the eps-MSE:
      c_eps = sigma^2 (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 = (e^{-lam} + sigma_d^2)/sigma_d^2.
    - w = 2 p c_eps = N(-lam/2; -1.2, 1.2) (e^{-lam} + sigma_d^2)/sigma_d^2.
    N(-lam/2; -1.2, 1.2) = 2 N(lam; 2.4, 2.4), so this is (2/sigma_d^2) N(lam; 2.4, 2.4)
    (e^{-lam} + sigma_d^2); the library keeps ddm_dynamical's normalisation, sigma_d^2/2 = 1/8
    of the recipe."""
    sd2 = EDM_SIGMA_DATA**2
    recipe = stats.norm.pdf(-lam / 2, EDM_P_MEAN, EDM_P_STD) * (np.exp(-lam) + sd2) / sd2
    return sd2 / 2 * recipe


def edm_peak() -> float:
    """argmax_lam of the EDM weighting, by numerical maximisation of the closed form."""
    res = optimize.minimize_scalar(
        lambda x: -float(edm(np.array(x))),
        bounds=(-10, 10),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return float(res.x)


def edm_monotonic(lam: np.ndarray) -> np.ndarray:
    """Kingma & Gao (2023, 'Understanding Diffusion Objectives as the ELBO with Simple Data
    Augmentation', §5): the EDM weighting made monotone by holding it at its maximum on the
    noisy side, w(lam) = max w_EDM for lam < argmax w_EDM, w_EDM(lam) above it."""
    return edm(np.maximum(lam, edm_peak()))


def jstar_standin(lam: np.ndarray) -> np.ndarray:
    """A known optimal-loss curve to bind Jstar to: the exact optimal eps-MSE of standard normal
    data, alpha^2 = sigmoid(lam) (any positive curve would do; this one has J* -> 0 at high noise)."""
    return 1 / (1 + np.exp(-lam))


def xu_optimal(lam: np.ndarray, a=1.0, w_max=100.0, mu=-1.2, s=1.2, sigma_star=0.3) -> np.ndarray:
    """Xu et al. (2506.13763, §3.4): on the x0-MSE at VE noise sigma = e^(-lam/2),
    w_sigma = a min(1 / J*_sigma, w*) + N(log sigma; mu, s^2) 1[sigma < sigma*], with
    J*_sigma = e^(-lam) J*_eps; on the eps-MSE (x0-MSE = e^(-lam) eps-MSE) the weight is
    e^(-lam) w_sigma. Here J*_eps is ``jstar_standin``."""
    sigma = np.exp(-lam / 2)
    j_x0 = np.exp(-lam) * jstar_standin(lam)
    log_normal = np.exp(-0.5 * ((np.log(sigma) - mu) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    w_sigma = a * np.minimum(1 / j_x0, w_max) + log_normal * (sigma < sigma_star)
    return np.exp(-lam) * w_sigma


# -- eps_mse and simple: functions of t on a given schedule ---------------------------------


def eps_mse(schedule: str, t: np.ndarray, log_snr_range=(-10.0, 10.0)) -> np.ndarray:
    """Plain eps-MSE with t ~ U: w = 2 p(lam) = 2 / |dlam/dt| on that schedule."""
    if schedule == "edm_lognormal":  # lam ~ N(2.4, 2.4^2) truncated to the range
        a, b = ((x - 2.4) / 2.4 for x in log_snr_range)
        return 2 * stats.truncnorm.pdf(gaussian(schedule, t)["log_snr"], a, b, 2.4, 2.4)
    return 2 / np.abs(gaussian(schedule, t)["dlog_snr_dt"])


def simple(schedule: str, t: np.ndarray) -> np.ndarray:
    """Shi & Titsias 'simple': (1 - alpha_t)/(-alpha'_t), the inverse of the ELBO's CE factor."""
    m = masked(schedule, t)
    return (1 - m["alpha"]) / -m["dalpha_dt"]


# -- schedules -------------------------------------------------------------------------------


def gaussian(name: str, t: np.ndarray, log_snr_range=(-10.0, 10.0)) -> dict[str, np.ndarray]:
    """alpha, sigma, lam, dlam/dt, dalpha/dt of the Gaussian schedules, each from its paper."""
    u = np.pi * t / 2
    if name == "vp_cosine":  # alpha = cos(pi t/2), sigma = sin(pi t/2)
        alpha, sigma, dalpha = np.cos(u), np.sin(u), -np.pi / 2 * np.sin(u)
    elif name == "iddpm_cosine":  # Nichol & Dhariwal: alpha_bar = f(t)/f(0), f = cos^2, s = 0.008
        s = 0.008
        v, v0 = (t + s) / (1 + s) * np.pi / 2, s / (1 + s) * np.pi / 2
        alpha = np.cos(v) / np.cos(v0)
        sigma = np.sqrt(1 - alpha**2)
        dalpha = -np.sin(v) * np.pi / (2 * (1 + s)) / np.cos(v0)
    elif name == "vp_linear":  # beta(t) = 0.1 + 19.9 t, alpha^2 = exp(-int beta)
        g, dg = 0.1 * t + 19.9 * t**2 / 2, 0.1 + 19.9 * t
        alpha, sigma = np.exp(-g / 2), np.sqrt(-np.expm1(-g))
        dalpha = -dg / 2 * alpha
    elif name == "rectified_flow":
        alpha, sigma, dalpha = 1 - t, t, -np.ones_like(t)
    elif name == "shifted_cosine":
        # simple diffusion: SNR of the cosine times r^2, r = noise_d/image_d = 64/128; VP, so
        # alpha^2 = r^2 c^2 / (r^2 c^2 + s^2) with c, s = cos, sin(pi t/2), and differentiating,
        # d alpha/dt = -(pi/2) r s / (r^2 c^2 + s^2)^{3/2}
        r = 64 / 128
        d = r**2 * np.cos(u) ** 2 + np.sin(u) ** 2
        alpha, sigma = r * np.cos(u) / np.sqrt(d), np.sin(u) / np.sqrt(d)
        dalpha = -np.pi / 2 * r * np.sin(u) / d**1.5
    elif name == "edm_lognormal":  # t = P(Lam > lam), Lam ~ N(2.4, 2.4^2) truncated; VP path
        lo, hi = (stats.norm.cdf((x - 2.4) / 2.4) for x in log_snr_range)
        lam = 2.4 + 2.4 * stats.norm.ppf(lo + (1 - t) * (hi - lo))
        a, b = ((x - 2.4) / 2.4 for x in log_snr_range)
        dlam = -1 / stats.truncnorm.pdf(lam, a, b, 2.4, 2.4)
        alpha2 = 1 / (1 + np.exp(-lam))
        return {
            "log_snr": lam,
            "dlog_snr_dt": dlam,
            "alpha": np.sqrt(alpha2),
            "sigma": np.sqrt(1 - alpha2),
        }
    else:
        raise KeyError(name)
    # lam = log(alpha^2/sigma^2); with alpha^2 + sigma^2 = 1 or the rectified-flow pair
    lam = 2 * np.log(alpha / sigma)
    dsigma = -alpha * dalpha / sigma if name != "rectified_flow" else np.ones_like(t)
    dlam = 2 * (dalpha / alpha - dsigma / sigma)
    return {
        "alpha": alpha,
        "sigma": sigma,
        "log_snr": lam,
        "dlog_snr_dt": dlam,
        "dalpha_dt": dalpha,
    }


def masked(name: str, t: np.ndarray) -> dict[str, np.ndarray]:
    """alpha (keep probability) and alpha' of the masked schedules (MD4, MDLM), and the
    masked log-SNR lam = log(alpha/(1 - alpha)) with dlam/dt = alpha'/(alpha (1 - alpha))."""
    if name == "masked_linear":
        alpha, dalpha = 1 - t, -np.ones_like(t)
    elif name == "md4_cosine":  # MD4: 1 - cos(pi/2 (1 - t))
        alpha, dalpha = 1 - np.cos(np.pi / 2 * (1 - t)), -np.pi / 2 * np.sin(np.pi / 2 * (1 - t))
    elif name == "masked_poly":  # MD4 poly, exponent 2
        alpha, dalpha = 1 - t**2, -2 * t
    elif name == "mdlm_cosine":
        alpha, dalpha = np.cos(np.pi * t / 2), -np.pi / 2 * np.sin(np.pi * t / 2)
    else:
        raise KeyError(name)
    return {
        "alpha": alpha,
        "sigma": 1 - alpha,
        "log_snr": np.log(alpha) - np.log1p(-alpha),
        "dlog_snr_dt": dalpha / (alpha * (1 - alpha)),
        "dalpha_dt": dalpha,
    }
