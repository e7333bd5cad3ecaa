"""EDM's augmentation pipeline, against EDM's own outputs and by its properties.

The resampling (sym6 up, bilinear, sym6 down) keeps a linear image linear, so on a ramp
f(u) = a.u + c (u in pixels about the centre) a warped image must equal f(G^-1 u) wherever
G^-1 u lands well inside the image (up to the sub-pixel skew of EDM's 2x grid): the tests
rebuild G^-1 from the labels alone and check the pixels against that closed form.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffobj.training.augment import AUGMENT_DIM, SYM6, AugmentPipe, Transform, warp

H = W = 32
EDGE = 6.0  # pixels near the border mix in the reflected padding: not linear there
REF = torch.load(Path(__file__).parent / "reference" / "edm_augment.pt", weights_only=False)
RAMP = torch.tensor([0.03, -0.05]), 0.2  # a (per pixel along x, y), c


def centred_grid() -> torch.Tensor:
    """(H, W, 2) pixel coordinates (x right, y down) about the image centre."""
    y, x = torch.meshgrid(
        torch.arange(H) - (H - 1) / 2, torch.arange(W) - (W - 1) / 2, indexing="ij"
    )
    return torch.stack([x, y], -1).double()


def ramp_at(u: torch.Tensor) -> torch.Tensor:
    a, c = RAMP
    return u @ a.double() + c


def ramp_images(n: int) -> torch.Tensor:
    return ramp_at(centred_grid()).expand(n, 3, H, W).contiguous()  # float64: exact to 1e-10


def inverse_from_labels(labels: torch.Tensor, pipe: AugmentPipe) -> torch.Tensor:
    """G^-1 (N, 3, 3) read off EDM's label layout (anisotropic axes unrotated)."""
    lab = labels.double()
    s = torch.exp2(lab[:, 2] * pipe.scale_std)
    theta = torch.atan2(lab[:, 4], lab[:, 3] + 1)
    a = torch.exp2(lab[:, 5] * pipe.aniso_std)
    shift = torch.stack([lab[:, 7] * W, lab[:, 8] * H], 1) * pipe.translate_std
    g = torch.zeros(len(lab), 3, 3, dtype=torch.float64)
    c, sn = theta.cos(), theta.sin()
    # scale^-1 @ rotation(theta) @ diag(1/a, a), then a shift by -shift
    g[:, 0, 0], g[:, 0, 1] = c / (s * a), -sn * a / s
    g[:, 1, 0], g[:, 1, 1] = sn / (s * a), c * a / s
    g[:, :2, 2] = -(g[:, :2, :2] @ shift[:, :, None])[..., 0]
    g[:, 2, 2] = 1
    return g


def expected_on_interior(g_inv: torch.Tensor, margin: float = 0.0):
    """f(G^-1 u) and the mask of output pixels whose source lies inside the image."""
    u = centred_grid().reshape(-1, 2)
    src = u @ g_inv[:, :2, :2].transpose(1, 2) + g_inv[:, None, :2, 2]  # (N, HW, 2)
    half = torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=torch.float64) - margin
    inside = (src.abs() <= half).all(-1)
    return ramp_at(src).reshape(-1, 1, H, W), inside.reshape(-1, 1, H, W)


def edm_candidates(labels: torch.Tensor, pipe: AugmentPipe):
    """The transforms EDM's labels allow: (w, r) and (-w, r + pi) for the anisotropy."""
    lab = labels.double()
    theta = torch.atan2(lab[:, 4], lab[:, 3] + 1)
    w, r = torch.hypot(lab[:, 5], lab[:, 6]), torch.atan2(lab[:, 6], lab[:, 5])
    for sign, turn in ((1, 0.0), (-1, math.pi)):
        fields = (lab[:, 0], lab[:, 1], lab[:, 2], theta, sign * w, r + turn, lab[:, 7], lab[:, 8])
        yield Transform(*(f.float() for f in fields), pipe)


@pytest.mark.parametrize(
    "run", REF["runs"], ids=lambda r: f"aniso_rotate_{r['kwargs']['aniso_rotate_prob']}"
)
def test_reproduces_edms_augment_pipe(run):
    """Given EDM's labels, the same images (EDM's up/downsampling included) to 1e-5."""
    kwargs = run["kwargs"]
    pipe = AugmentPipe(p=kwargs["p"], aniso_rotate_prob=kwargs["aniso_rotate_prob"])
    errors = torch.stack(
        [
            (t.apply(REF["x"]) - run["out"]).abs().flatten(1).amax(1)
            for t in edm_candidates(run["labels"], pipe)
        ]
    )
    assert errors.amin(0).max() < 1e-5  # each image: one reading of its labels is EDM's
    assert run["labels"][:, [2, 4, 5, 7, 8]].abs().amin() > 0  # every transform was drawn


def test_sym6_is_an_orthonormal_low_pass_filter():
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert float(h.sum()) == pytest.approx(math.sqrt(2), abs=1e-12)
    for shift in range(0, 12, 2):  # orthogonal to its even shifts, unit norm
        assert float((h[shift:] * h[: 12 - shift]).sum()) == pytest.approx(
            float(shift == 0), abs=1e-11
        )


def test_p_zero_is_the_identity_with_zero_labels():
    x = torch.randn(16, 3, H, W)
    out, labels = AugmentPipe(p=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    assert labels.shape == (16, AUGMENT_DIM) and torch.count_nonzero(labels) == 0


def test_flips_are_what_the_labels_say():
    pipe = AugmentPipe(p=1.0, scale=0, rotate=0, aniso=0, translate=0)
    x = torch.randn(64, 3, H, W)
    out, labels = pipe(x, torch.Generator().manual_seed(1))
    assert torch.count_nonzero(labels[:, 2:]) == 0
    for img, orig, (fx, fy) in zip(out, x, labels[:, :2].tolist(), strict=True):
        expected = orig.flip(2) if fx else orig
        torch.testing.assert_close(img, expected.flip(1) if fy else expected, rtol=0, atol=0)
    assert 0 < labels[:, 0].mean() < 1 and 0 < labels[:, 1].mean() < 1  # both ways drawn


def test_geometric_transforms_are_what_the_labels_say():
    """Scale, rotation, anisotropy (axis-aligned) and translation, rebuilt from the labels."""
    pipe = AugmentPipe(p=1.0, xflip=0, yflip=0, aniso_rotate_prob=0.0)
    out, labels = pipe(ramp_images(32), torch.Generator().manual_seed(2))
    assert torch.count_nonzero(labels[:, 6]) == 0  # unrotated axes: w sin(0)
    expected, inside = expected_on_interior(inverse_from_labels(labels, pipe), EDGE)
    assert inside.float().mean() > 0.2  # the check covers much of the image
    err = (out[:, :1].double() - expected).abs()[inside]
    # sym6 is not exactly symmetric: EDM's 2x grid sits a fraction of a pixel off, which a
    # warp turns into a small skew (here < 0.01 on a ramp of 0.05 per pixel; a sign or an
    # order wrong costs ~1). EDM's exact values are the fixture test's.
    assert err.max() < 1e-2


def test_rotated_anisotropy_is_a_symmetric_stretch():
    """R(-r) diag(1/a, a) R(r): determinant 1, eigenvalues 1/a and a, axis at angle r."""
    pipe = AugmentPipe(p=1.0, xflip=0, yflip=0, scale=0, rotate=0, translate=0)
    t = pipe.draw(64, torch.Generator().manual_seed(3), torch.device("cpu"))
    g = t.inverse_matrix(H, W)[:, :2, :2].double()
    a = torch.exp2(t.aniso.double() * pipe.aniso_std)
    tol = {"rtol": 0, "atol": 1e-6}  # the matrices are float32
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(64, dtype=torch.float64), **tol)
    axis = torch.stack([t.aniso_angle.cos(), -t.aniso_angle.sin()], 1).double()
    torch.testing.assert_close((g @ axis[:, :, None])[..., 0], axis / a[:, None], **tol)


def test_warp_inverts():
    """Warping by G^-1 and then by G gives the image back (where both stay inside)."""
    pipe = AugmentPipe(p=1.0, xflip=0, yflip=0)
    t = pipe.draw(16, torch.Generator().manual_seed(4), torch.device("cpu"))
    g_inv = t.inverse_matrix(H, W).double()
    x = ramp_images(16)
    g = torch.linalg.inv(g_inv)
    back = warp(warp(x, g_inv), g)
    # back(u) reads the first warp around G u, which is exact where its own sources
    # u + G^-1 d, |d| < EDGE, are inside: margins of EDGE and EDGE ||G^-1||
    _, lands_inside = expected_on_interior(g, margin=EDGE)
    stretch = torch.linalg.matrix_norm(g_inv[:, :2, :2], ord=2).max().item()
    _, u_inside = expected_on_interior(torch.eye(3, dtype=torch.float64)[None], EDGE * stretch)
    ok = lands_inside & u_inside
    err = (back - x).abs()[:, :1][ok]
    assert ok.float().mean() > 0.1 and err.max() < 1e-5


def test_integer_shift_moves_pixels_exactly():
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    g_inv = torch.eye(3, dtype=torch.float64)[None].clone()
    g_inv[0, 0, 2] = -3.0  # out(u) = x(u - 3): the content moves 3 pixels right
    out = warp(x, g_inv)
    # exact up to float32 rounding of the interpolation weights (a few ulp of |x| ~ 4)
    torch.testing.assert_close(out[..., 3:], x[..., :-3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.12, 0.5])
def test_each_transform_is_drawn_with_probability_p(p):
    n = 20000
    labels = AugmentPipe(p=p).draw(n, torch.Generator().manual_seed(5), "cpu").labels()
    se = 4 * math.sqrt(p * (1 - p) / n)
    assert labels[:, 0].mean().item() == pytest.approx(0.5, abs=0.02)  # x-flip: 1e8 p >= 1
    assert labels[:, 1].mean().item() == pytest.approx(p / 2, abs=se)  # y-flip: p, then 1/2
    for col in (2, 4, 5, 7):  # scale, rotation, anisotropy, translation
        assert (labels[:, col] != 0).float().mean().item() == pytest.approx(p, abs=se)


# -- in training ------------------------------------------------------------------------------------


def test_training_feeds_the_labels_to_an_edm_network(tmp_path, monkeypatch):
    """A run with augment_p trains, and its network sees the labels of what was done."""
    from test_train import quiet, run_config

    from diffobj.models.edm_unet import EDMDDPMpp
    from diffobj.training import train as train_mod

    seen = []
    forward = EDMDDPMpp.forward

    def spy(self, x, log_snr, labels=None, augment_labels=None):
        if self.training:
            seen.append(augment_labels)
        return forward(self, x, log_snr, labels, augment_labels)

    monkeypatch.setattr(EDMDDPMpp, "forward", spy)
    model = {"preset": "edm_ddpmpp", "augment_dim": AUGMENT_DIM, "channels": 16}
    cfg = run_config(tmp_path, model=model, steps=2, log_every=1, augment_p=0.5)
    train_mod.train(cfg, tmp_path / "run", quiet())
    assert len(seen) == 2 and all(s.shape == (8, AUGMENT_DIM) for s in seen)
    assert all(torch.count_nonzero(s[:, 0]) > 0 for s in seen)  # x-flips happened


@pytest.mark.parametrize(
    ("model", "message"),
    [({}, "needs model .* preset edm_ddpmpp"), ({"preset": "edm_ddpmpp"}, "augment_dim 9")],
)
def test_augmentation_without_the_labels_input_is_a_user_error(tmp_path, model, message):
    from test_train import quiet, run_config

    from diffobj.errors import UserError
    from diffobj.training import train as train_mod

    cfg = run_config(tmp_path, model={"channels": 16, **model}, augment_p=0.12)
    with pytest.raises(UserError, match=message):
        train_mod.train(cfg, tmp_path / "run", quiet())
    assert not (tmp_path / "run").exists()


def test_channels_last_images_stay_channels_last_with_the_contiguous_result():
    """On a GPU the batch is channels_last; an NCHW result made the network's first layer
    convert it back (and recompile under torch.compile)."""
    images = torch.randn(6, 3, H, W, generator=torch.Generator().manual_seed(0))
    pipe = AugmentPipe(p=1.0)
    contiguous, labels = pipe(images, torch.Generator().manual_seed(1))
    last, last_labels = pipe(
        images.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(1)
    )
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert contiguous.is_contiguous()
    torch.testing.assert_close(last_labels, labels, rtol=0, atol=0)
    torch.testing.assert_close(last, contiguous, rtol=0, atol=1e-5)  # conv rounding per layout
