"""MD4's masked sampling options against closed forms: the time grids, the reveal probability
(through the forward marginal), top-p by its definition, the final argmax, and the sampler's
whole output law against an exact dynamic program over a tiny token set."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from diffobj import spec
from diffobj.errors import UserError
from diffobj.objectives import schedules
from diffobj.processes.masked import MASK, VOCAB
from diffobj.sampling.samplers import ancestral, noise_grid, top_p_logits
from diffobj.spec import SpecError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

EPS = 1e-4  # MD4's alpha clipping: alpha in [eps, 1 - eps]
MD4_RANGE = (-math.log((1 - EPS) / EPS), math.log((1 - EPS) / EPS))


def schedule(name: str, log_snr_range=MD4_RANGE) -> schedules.Schedule:
    return schedules.build(name, schedules.load_library()[name], log_snr_range)


# -- time grids --------------------------------------------------------------------------------


def test_cosine_grid_on_the_linear_schedule_is_md4s_cifar10_grid():
    # MD4 (configs/md4/cifar10.py: linear schedule, sampling_grid = "cosine", 256 steps): step i
    # goes from t = cos(pi/2 (1 - u)) at u = (T - i)/T, with alpha(t) = (1 - 2 eps)(1 - t) + eps
    steps = 256
    u = (steps - np.arange(steps + 1)) / steps
    md4_alpha = (1 - 2 * EPS) * (1 - np.cos(np.pi / 2 * (1 - u))) + EPS
    sch = schedule("masked_linear")
    alpha = noise_grid(sch, steps, "cosine").levels.alpha.numpy()
    np.testing.assert_allclose(alpha, md4_alpha, rtol=0, atol=1e-12)
    uniform = noise_grid(sch, steps, "uniform").levels.alpha.numpy()
    np.testing.assert_allclose(uniform, (1 - 2 * EPS) * (1 - u) + EPS, rtol=0, atol=1e-12)
    # the gap the issue measured: max |sin(pi u/2) - u| = 0.21 (at cos(pi u/2) = 2/pi)
    assert np.abs(alpha - uniform).max() == pytest.approx(0.2105, abs=1e-3)


def test_a_schedules_grid_matches_its_log_snr_at_uniform_times():
    # md4_cosine's grid on the linear schedule: alpha_i = 1 - cos(pi/2 (1 - t_i)) with t_i
    # uniform on md4_cosine's own times for the same alpha range [eps, 1 - eps]
    steps = 16
    t0 = 1 - 2 / np.pi * np.arccos(EPS)  # alpha(t0) = 1 - eps
    t1 = 1 - 2 / np.pi * np.arccos(1 - EPS)  # alpha(t1) = eps
    t = t0 + (t1 - t0) * (steps - np.arange(steps + 1)) / steps
    expected = 1 - np.cos(np.pi / 2 * (1 - t))
    linear = schedule("masked_linear")
    md4_cosine = {"name": "md4_cosine", **schedules.load_library()["md4_cosine"]}
    alpha = noise_grid(linear, steps, "schedule", of=md4_cosine).levels.alpha.numpy()
    np.testing.assert_allclose(alpha, expected, rtol=0, atol=1e-9)


def test_unknown_grid_is_a_user_error():
    with pytest.raises(UserError, match="masked grid"):
        noise_grid(schedule("masked_linear"), 4, "quadratic")


@pytest.mark.parametrize(("grid", "ok"), [("cosine", True), ("md4_cosine", True), ("cosin", False)])
def test_spec_sampling_names_a_grid_of_the_library(tmp_path, grid, ok):
    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    raw["sampling"] = {"masked_grid": grid, "masked_top_p": 0.98, "masked_final_argmax": True}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    if ok:
        assert spec.load(path, root=root).spec.sampling.masked_grid == grid
    else:
        with pytest.raises(SpecError, match="sampling.masked_grid: 'cosin' is neither"):
            spec.load(path, root=root)


# -- the reveal probability, through the forward process's marginal ------------------------


def masked_grid(sch: schedules.Schedule, steps: int, name: str):
    """A registered grid, or md4_cosine's (the ``schedule`` grid of that library entry)."""
    if name != "md4_cosine":
        return noise_grid(sch, steps, name)
    return noise_grid(sch, steps, "schedule", of={"name": name, **schedules.load_library()[name]})


def uniform_logits_recording(record: list):
    def fn(z, level):
        record.append((float(level.t[0]), (z == MASK).double().mean().item()))
        return torch.zeros(z.shape[0], VOCAB, *z.shape[1:])

    return fn


@pytest.mark.parametrize("grid", ["uniform", "cosine", "md4_cosine"])
def test_masked_fraction_at_every_step_is_one_minus_alpha(grid):
    """Unmasking is the time reversal of masking: at each grid time t the tokens still masked
    are a fraction 1 - alpha(t), the forward marginal. Any other reveal probability (e.g.
    (alpha_s - alpha_t)/(1 - alpha_s)) breaks it."""
    sch = schedule("md4_cosine")
    steps, shape = 8, (2048, 1, 4, 4)
    record: list = []
    ancestral(
        uniform_logits_recording(record),
        sch,
        masked_grid(sch, steps, grid),
        shape,
        generator=torch.Generator().manual_seed(0),
        final_argmax=True,
    )
    assert len(record) >= steps - 1  # the network runs where something is revealed
    n = math.prod(shape)
    for t, fraction in record:
        alpha = 1 - math.cos(math.pi / 2 * (1 - t))  # md4_cosine, in closed form
        assert abs(fraction - (1 - alpha)) < 5 * math.sqrt(alpha * (1 - alpha) / n) + 1e-12, t


# -- top-p ----------------------------------------------------------------------------------------


def nucleus_by_definition(probs: np.ndarray, p: float) -> set[int]:
    """Among all sets of values with total probability >= p, the smallest; of those, the most
    probable (brute force over every subset)."""
    best = None
    for size in range(1, len(probs) + 1):
        for subset in itertools.combinations(range(len(probs)), size):
            mass = probs[list(subset)].sum()
            if mass >= p and (best is None or mass > probs[list(best)].sum()):
                best = subset
        if best is not None:
            return set(best)
    raise AssertionError("p > 1")


PROBS = np.array([0.06, 0.25, 0.04, 0.4, 0.1, 0.15])


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7, 0.75, 0.85, 0.93, 0.97, 0.999, 1.0])
def test_top_p_keeps_the_smallest_most_probable_set_reaching_p(p):
    logits = torch.tensor(np.log(PROBS) + 1.7)  # logits are defined up to a constant
    kept = set(torch.isfinite(top_p_logits(logits, p)).nonzero().flatten().tolist())
    assert kept == nucleus_by_definition(PROBS, p)
    filtered = top_p_logits(logits, p)
    assert torch.equal(filtered[list(kept)], logits[list(kept)])  # kept logits unchanged


def test_top_p_keeps_ties_at_the_cut_as_md4():
    # MD4 keeps every value with probability >= the cut-off: all three 0.2s here
    logits = torch.tensor(np.log([0.3, 0.2, 0.2, 0.2, 0.1]))
    kept = torch.isfinite(top_p_logits(logits, 0.45)).nonzero().flatten().tolist()
    assert kept == [0, 1, 2, 3]


def chi_square_ok(counts: np.ndarray, law: np.ndarray) -> bool:
    """Pearson's test at level 1e-4 (fixed seed: deterministic), and nothing where law = 0."""
    n = counts.sum()
    support = law > 0
    if counts[~support].any():
        return False
    expected = n * law[support]
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    return stat < stats.chi2.ppf(1 - 1e-4, support.sum() - 1)


def test_top_p_sampling_draws_from_the_renormalised_nucleus():
    probs = np.zeros(VOCAB)
    probs[[3, 9, 200, 17, 40, 41]] = PROBS
    with np.errstate(divide="ignore"):
        logits = torch.tensor(np.log(probs)).float()

    def fixed(z, level):
        return logits.reshape(1, VOCAB, 1, 1, 1).expand(z.shape[0], VOCAB, *z.shape[1:])

    sch = schedule("masked_linear")
    z = ancestral(
        fixed,
        sch,
        noise_grid(sch, 1, "uniform"),
        (20000, 1, 1, 1),
        generator=torch.Generator().manual_seed(0),
        top_p=0.75,
    )
    counts = np.bincount(z.flatten().numpy(), minlength=VOCAB)
    nucleus = np.where(np.isin(np.arange(VOCAB), [17, 9, 41]), probs, 0)  # 0.25 + 0.4 + 0.15
    assert chi_square_ok(counts, nucleus / nucleus.sum())
    assert not chi_square_ok(counts, probs)  # without top-p the law differs


# -- the final argmax ---------------------------------------------------------------------------


def test_final_argmax_fills_what_is_left_at_lam_max_with_the_mode():
    # a narrow range: at its end alpha = sigmoid(1) = 0.73, so 27% of tokens are still masked
    sch = schedule("md4_cosine", (-3.0, 1.0))
    probs = np.zeros(VOCAB)
    probs[[5, 7, 11]] = [0.35, 0.4, 0.25]
    with np.errstate(divide="ignore"):
        logits = torch.tensor(np.log(probs)).float()
    levels = []

    def fixed(z, level):
        levels.append(float(level.log_snr[0]))
        return logits.reshape(1, VOCAB, 1, 1).expand(z.shape[0], VOCAB, *z.shape[1:])

    shape = (2000, 1, 8)
    n = math.prod(shape)
    alpha_end = 1 / (1 + math.exp(-1.0))
    for final_argmax, share_of_mode in ((True, alpha_end * 0.4 + (1 - alpha_end)), (False, 0.4)):
        levels.clear()
        z = ancestral(
            fixed,
            sch,
            noise_grid(sch, 6, "uniform"),
            shape,
            generator=torch.Generator().manual_seed(1),
            final_argmax=final_argmax,
        )
        assert (z != MASK).all()
        share = (z == 7).double().mean().item()
        std = math.sqrt(share_of_mode * (1 - share_of_mode) / n)
        assert abs(share - share_of_mode) < 5 * std
    # with final_argmax the last network call is at the end of the range (lam_max = 1)
    grid = noise_grid(sch, 6, "uniform")
    ancestral(
        fixed, sch, grid, shape, generator=torch.Generator().manual_seed(1), final_argmax=True
    )
    assert levels[-1] == pytest.approx(1.0, abs=1e-9)


# -- the whole sampler against an exact dynamic program on a tiny data set --------------------

VALUES, D = 3, 3
TRAIN = [(0, 0, 1), (0, 1, 1), (1, 1, 2), (2, 0, 1), (0, 0, 1), (1, 2, 2)]
SEQUENCES = list(itertools.product(range(VALUES), repeat=D))
# the data: TRAIN's empirical distribution mixed with 10% uniform, so that every partial state
# the sampler can reach (several tokens revealed at once) has a defined posterior
JOINT = {x: 0.9 * TRAIN.count(x) / len(TRAIN) + 0.1 / len(SEQUENCES) for x in SEQUENCES}


def exact_marginals(z: tuple[int, ...]) -> np.ndarray:
    """q(x_d = v | z): (D, VALUES), by brute force over every sequence consistent with z."""
    out = np.zeros((D, VALUES))
    for x, q in JOINT.items():
        if all(zd in (MASK, xd) for zd, xd in zip(z, x, strict=True)):
            out[np.arange(D), x] += q
    return out / out.sum(1, keepdims=True)


def exact_denoiser(z: torch.Tensor, level) -> torch.Tensor:
    logits = torch.full((z.shape[0], VOCAB, D), -math.inf)
    flat = z.reshape(z.shape[0], D)
    for key in {tuple(row) for row in flat.tolist()}:
        rows = (flat == torch.tensor(key)).all(1)
        marg = torch.tensor(exact_marginals(key).T)  # (VALUES, D)
        logits[rows, :VALUES] = marg.log().float()
    return logits.reshape(z.shape[0], VOCAB, 1, 1, D)


def nucleus_law(probs: np.ndarray, p: float | None) -> np.ndarray:
    """The top-p law of one token: its nucleus (with ties at the cut, as MD4), renormalised."""
    if p is None:
        return probs
    cut = min(probs[list(nucleus_by_definition(probs, p))])
    out = np.where(probs >= cut, probs, 0)
    return out / out.sum()


def sampler_law(alphas: list[float], top_p: float | None, final_argmax: bool) -> dict:
    """The exact law of ancestral sampling with the exact denoiser: a dynamic program over the
    (VALUES + 1)^D partial states. Each step reveals each masked token independently with
    probability (alpha_s - alpha_t)/(1 - alpha_t) and draws its value from its (top-p) marginal."""
    law = {(MASK,) * D: 1.0}
    for a_t, a_s in itertools.pairwise(alphas):
        reveal = (a_s - a_t) / (1 - a_t)
        new: dict = {}
        for z, mass in law.items():
            marg = exact_marginals(z)
            options = [
                [(zd, 1.0)]
                if zd != MASK
                else [(MASK, 1 - reveal)] * (reveal < 1)
                + [(v, reveal * q) for v, q in enumerate(nucleus_law(marg[d], top_p)) if q > 0]
                for d, zd in enumerate(z)
            ]
            for combo in itertools.product(*options):
                key = tuple(v for v, _ in combo)
                new[key] = new.get(key, 0.0) + mass * math.prod(q for _, q in combo)
        law = new
    if final_argmax:
        done: dict = {}
        for z, mass in law.items():
            mode = exact_marginals(z).argmax(1)
            key = tuple(int(mode[d]) if zd == MASK else zd for d, zd in enumerate(z))
            done[key] = done.get(key, 0.0) + mass
        law = done
    return law


@pytest.mark.parametrize(
    ("grid", "top_p", "final_argmax"),
    [("uniform", None, False), ("cosine", 0.7, False), ("cosine", None, True)],
)
def test_sample_frequencies_match_the_exact_law_of_the_sampler(grid, top_p, final_argmax):
    sch = schedule("md4_cosine", (-6.0, 1.5))  # alpha ends at 0.82: the final step matters
    steps, num = 4, 12000
    alphas = noise_grid(sch, steps, grid).levels.alpha.tolist()
    if not final_argmax:
        alphas[-1] = 1.0
    law = sampler_law(alphas, top_p, final_argmax)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    z = ancestral(
        exact_denoiser,
        sch,
        noise_grid(sch, steps, grid),
        (num, 1, 1, D),
        generator=torch.Generator().manual_seed(0),
        top_p=top_p,
        final_argmax=final_argmax,
    )
    outcomes = sorted(set(law) | {tuple(r) for r in z.reshape(num, D).tolist()})
    index = {o: i for i, o in enumerate(outcomes)}
    counts = np.bincount(
        [index[tuple(r)] for r in z.reshape(num, D).tolist()], minlength=len(outcomes)
    )
    assert chi_square_ok(counts, np.array([law.get(o, 0.0) for o in outcomes]))


def test_with_many_steps_the_exact_law_is_the_data_distribution():
    # one token revealed at a time in the limit: the sampler draws from the data's joint
    sch = schedule("md4_cosine")
    law = sampler_law(
        noise_grid(sch, 200, "uniform").levels.alpha.tolist()[:-1] + [1.0], None, False
    )
    assert set(law) == set(JOINT)
    assert sum(abs(law[x] - q) for x, q in JOINT.items()) < 0.02
