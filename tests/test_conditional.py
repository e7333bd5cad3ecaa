"""Class-conditional sampling: balanced labels, classifier-free guidance in closed form, and a
model trained on the default data that draws the class it is asked for."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from default_grid import default_run

from diffobj import spec
from diffobj.errors import UserError
from diffobj.objectives.schedules import Level
from diffobj.sampling.config import requested
from diffobj.sampling.guidance import check_guidance, class_labels, guided
from diffobj.sampling.samplers import ancestral, noise_grid, sample_run, write_samples

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_labels_are_balanced_and_every_prefix_as_balanced_as_it_can_be():
    labels = class_labels(25, 10)
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    for n in range(1, 25):
        counts = np.bincount(labels[:n], minlength=10)
        assert counts.max() - counts.min() <= 1
    assert class_labels(25, 0) is None


def level(batch: int) -> Level:
    return Level(*(torch.full((batch,), 0.5, dtype=torch.float64) for _ in range(6)))


def label_model(kind: str):
    """A stand-in network whose output is a known function of the label: eps = label + z
    (Gaussian), logits favouring token value = label with strength (1 + label) / 20 (masked)."""

    def make(labels):
        def fn(z, lv):
            lab = labels.double().view(-1, *([1] * (z.dim() - 1)))
            if kind == "gaussian":
                return z + lab
            values = torch.arange(256, dtype=torch.float64).view(1, 256, *([1] * (z.dim() - 1)))
            logits = -(values - lab.unsqueeze(1)).abs() * 0.05 * (1 + lab.unsqueeze(1)) + 7.0
            return logits.expand(z.shape[0], 256, *z.shape[1:])

        return fn

    return make


def test_gaussian_guidance_extrapolates_the_noise_prediction():
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    fn = guided(label_model("gaussian"), labels, 10, 2.0, "gaussian")
    # (1 + w) (z + c) - w (z + 10) = z + 3c - 20
    expected = z + 3 * labels.double().view(-1, 1, 1, 1) - 20
    torch.testing.assert_close(fn(z, level(4)).double(), expected)
    torch.testing.assert_close(
        guided(label_model("gaussian"), labels, 10, 0.0, "gaussian")(z, level(4)),
        z + labels.double().view(-1, 1, 1, 1),
    )


def test_masked_guidance_is_the_tempered_ratio_of_the_two_token_distributions():
    """mu_w ∝ mu_c^(1 + w) mu_u^(-w), whatever constant each network adds to its logits."""
    z = torch.full((2, 1, 1, 3), 256)
    labels = torch.tensor([3, 5])
    w = 1.5
    out = guided(label_model("masked"), labels, 9, w, "masked")(z, level(2))
    values = torch.arange(256, dtype=torch.float64)
    for b, c in enumerate([3, 5]):
        mu_c = torch.softmax(-(values - c).abs() * 0.05 * (1 + c), 0)
        mu_u = torch.softmax(-(values - 9).abs() * 0.05 * 10, 0)
        expected = mu_c ** (1 + w) * mu_u ** (-w)
        expected = expected / expected.sum()
        torch.testing.assert_close(torch.softmax(out[b, :, 0, 0, 0].double(), 0), expected)


def test_masked_guidance_leaves_the_reveal_schedule_alone():
    """Guidance changes which value is revealed, not when: with any scale, the sampler reveals
    the same tokens at the same steps (same generator), only values differ."""
    from diffobj.run_config import RunConfig

    raw = (
        spec.load(ROOT / "config" / "config.yaml", root=ROOT)
        .run("digits-masked-md4_cosine-elbo-mlp-s0")
        .resolved()
    )
    schedule = RunConfig("x", raw).schedule
    labels = torch.tensor([1, 2])
    revealed_at = []
    for w in (0.0, 3.0):
        steps_seen = []
        make = label_model("masked")

        def recording(labels_, make=make, steps_seen=steps_seen):
            inner = make(labels_)

            def counting(z, lv):
                steps_seen.append((z == 256).sum().item())
                return inner(z, lv)

            return counting

        sampler_fn = guided(recording, labels, 9, w, "masked")
        grid = noise_grid(schedule, 16, "uniform")
        ancestral(
            sampler_fn, schedule, grid, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0)
        )
        per_half = steps_seen if w == 0 else [s // 2 for s in steps_seen]
        revealed_at.append(per_half)
    assert revealed_at[0] == revealed_at[1]


def test_guidance_needs_a_conditional_model_and_a_nonnegative_scale():
    check_guidance(0.0, 0)
    check_guidance(2.0, 10)
    with pytest.raises(UserError, match="unconditional"):
        check_guidance(1.0, 0)
    with pytest.raises(UserError, match=">= 0"):
        check_guidance(-1.0, 10)
    with pytest.raises(UserError, match=">= 0"):
        check_guidance(math.nan, 10)


def test_samples_npz_stores_the_labels(tmp_path):
    images = np.zeros((4, 8, 8, 1), np.uint8)
    write_samples(images, tmp_path / "s.npz", class_labels(4, 3))
    with np.load(tmp_path / "s.npz") as f:
        assert f["labels"].tolist() == [0, 1, 2, 0]
    write_samples(images, tmp_path / "u.npz")
    with np.load(tmp_path / "u.npz") as f:
        assert "labels" not in f


# -- a conditional model trained on the default data draws the requested class ------------------

SETTINGS = {  # the smallest settings found that pass reliably (fixed seeds, one CPU thread)
    "gaussian": ("vp_cosine", "sigmoid", 300, 0.002, "ddpm", 32),
    "masked": ("md4_cosine", "simple", 400, 0.004, "ancestral", 32),
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The embedded default's data (prepared sklearn digits, with labels.npy) and a classifier
    trained on the real training digits."""
    from diffobj.data.prepare import prepare
    from diffobj.metrics.classifier import train_classifier

    out = tmp_path_factory.mktemp("digits")
    torch.set_num_threads(1)
    prepare("sklearn_digits", out, test_fraction=0.2)
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    classifier = train_classifier(images, labels, epochs=10, log=None)
    return out, classifier


def conditional_run(tmp_path: Path, data: Path, kind: str) -> Path:
    schedule, weighting, steps, lr, _, _ = SETTINGS[kind]
    raw = default_run(f"digits-{kind}-{schedule}-{weighting}-mlp-s0").resolved()
    raw["data"]["images"] = str(data / "images.npy")
    # the small U-Net and log-SNR range these settings were tuned on (not the default's MLP)
    raw["model"].update(
        preset="diffobj_unet",
        channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attention_resolutions=[4],
        num_classes=10,
        label_dropout=0.1,
    )
    if kind == "gaussian":
        raw["process"]["log_snr_range"] = [-10.0, 10.0]
    raw["training"].update(
        steps=steps,
        lr=lr,
        batch_size=64,
        warmup_steps=20,
        ema_halflife_images=steps * 6.4,
        checkpoint_every=10**6,
        log_every=steps,
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_a_conditional_model_draws_the_requested_digit_and_guidance_helps(tmp_path, digits, kind):
    from diffobj.metrics.classifier import to_input
    from diffobj.training.train import TrainOptions, train

    data, classifier = digits
    train(
        conditional_run(tmp_path, data, kind),
        tmp_path / "run",
        TrainOptions(device="cpu", progress=False, eval_images=16),
    )
    *_, sampler, steps = SETTINGS[kind]
    accuracy = {}
    for w in (0.0, 1.0):
        images = sample_run(
            tmp_path / "run",
            requested(sampler, steps, 200, guidance=w),
            batch_size=200,
            progress=False,
        )
        with torch.no_grad():
            predicted = classifier(to_input(torch.from_numpy(images))).argmax(1).numpy()
        accuracy[w] = float(np.mean(predicted == class_labels(200, 10)))
    print(f"{kind}: share of samples classified as the requested digit {accuracy}")
    assert accuracy[0.0] >= 0.9
    assert accuracy[1.0] > accuracy[0.0]


def test_the_sample_command_writes_balanced_labels_of_a_conditional_run(tmp_path):
    from sklearn.datasets import load_digits
    from test_train import run_config  # the embedded default, on a few digits

    from diffobj.cli import main
    from diffobj.training.train import TrainOptions, train

    cfg = run_config(tmp_path, "masked", "simple", images=32, model={"num_classes": 10})
    np.save(tmp_path / "data" / "labels.npy", load_digits().target[:32].astype(np.int64))
    train(cfg, tmp_path / "run", TrainOptions(device="cpu", progress=False, eval_images=8))
    out = tmp_path / "samples.npz"
    argv = ["sample", "--run", str(tmp_path / "run"), "--sampler", "ancestral", "--steps", "4"]
    assert main([*argv, "--num", "12", "--guidance", "1", "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (12, 8, 8, 1)
        assert f["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
