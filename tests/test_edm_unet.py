"""The edm_ddpmpp preset against tensors computed by EDM's own code (tests/reference/README.md).

Everything is built from the fixture's ``config``, so a fixture of another size or attention
layout checks the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffobj.errors import UserError
from diffobj.models import build_model, count_parameters
from diffobj.models.edm_unet import EDMDDPMpp, SongUNet, load_edm_state_dict
from diffobj.objectives.schedules import Level
from diffobj.processes.gaussian import Denoiser, x0_from_eps

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

FIXTURE = Path(__file__).parent / "reference" / "edm_songunet_small.pt"
SHAPE_KEYS = ("img_resolution", "in_channels", "out_channels")


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def preset_from(ref: dict) -> EDMDDPMpp:
    cfg = ref["config"]
    assert cfg["in_channels"] == cfg["out_channels"]  # an image denoiser
    shape = (cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
    net = EDMDDPMpp(shape, **{k: v for k, v in cfg.items() if k not in SHAPE_KEYS})
    return load_edm_state_dict(net, ref["state_dict"]).eval()


def test_builds_edms_parameter_count(ref):
    assert count_parameters(SongUNet(**ref["config"])) == ref["n_params"]


def test_raw_network_matches_edm(ref):
    net = load_edm_state_dict(SongUNet(**ref["config"]), ref["state_dict"]).eval()
    with torch.no_grad():
        out = net(ref["x"], ref["c_noise"], ref["class_labels"], ref["augment_labels"])
        zero_aug = net(ref["x"], ref["c_noise"], ref["class_labels"], 0 * ref["augment_labels"])
    torch.testing.assert_close(out, ref["F"], atol=1e-5, rtol=0)
    torch.testing.assert_close(zero_aug, ref["F_zero_augment"], atol=1e-5, rtol=0)
    # augment labels must matter, or the F / F_zero_augment pair tests nothing
    assert (ref["F"] - ref["F_zero_augment"]).abs().max() > 1e-3


def test_diffobj_view_takes_log_snr_and_integer_labels(ref):
    """c_noise = ln(sigma)/4 = -lam/8 with lam = -2 ln sigma; labels as class indices."""
    net = preset_from(ref)
    lam = -2 * torch.log(ref["sigma"].double())
    labels = ref["class_labels"].argmax(1)
    with torch.no_grad():
        out = net(ref["x"], lam.float(), labels, ref["augment_labels"])
    torch.testing.assert_close(out, ref["F"], atol=1e-5, rtol=0)


def test_denoiser_with_F_prediction_is_edm_precond(ref):
    """diffobj's Denoiser (prediction F, sigma_data 0.5) on the VP path z = alpha x^ gives
    EDMPrecond's D = c_skip x^ + c_out F(c_in x^, ln(sigma)/4)."""
    net = preset_from(ref)
    sigma_hat = ref["sigma"].double()
    lam = -2 * torch.log(sigma_hat)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    zero = torch.zeros_like(lam)
    level = Level(zero, lam, zero, alpha, sigma, zero)
    z = ref["x"].double() * alpha[:, None, None, None]
    denoiser = Denoiser(net.double(), "F", 0.5)
    with torch.no_grad():
        eps = denoiser(z, level, ref["class_labels"].argmax(1), ref["augment_labels"].double())
    d = x0_from_eps(eps, z, level)
    torch.testing.assert_close(d.float(), ref["D"], atol=1e-5, rtol=0)


def test_no_label_index_is_the_zero_one_hot(ref):
    net = preset_from(ref)
    n = ref["config"]["label_dim"]
    x, c = ref["x"], ref["c_noise"]
    with torch.no_grad():
        dropped = net(x, -8 * c, torch.full((len(x),), n))
        zero = net.model(x, c, torch.zeros(len(x), n))
    torch.testing.assert_close(dropped, zero, atol=1e-6, rtol=0)


def test_edm_initialisation(ref):
    """xavier_uniform (std sqrt(2 / (fan_in + fan_out))), zero biases, 1e-5 'zero' layers,
    qkv scaled by sqrt(0.2)."""
    torch.manual_seed(0)
    net = SongUNet(**ref["config"])
    for name, p in net.named_parameters():
        if name.endswith(".bias") and "norm" not in name:
            assert torch.count_nonzero(p) == 0, name

    def xavier_std(w: torch.Tensor) -> float:
        receptive = w[0, 0].numel() if w.dim() > 2 else 1
        return math.sqrt(2 / ((w.shape[0] + w.shape[1]) * receptive))

    layer1 = net.map_layer1.weight
    assert layer1.std().item() == pytest.approx(xavier_std(layer1), rel=0.05)
    block = next(b for b in net.enc.values() if getattr(b, "attention", False))
    assert block.qkv.weight.std().item() == pytest.approx(
        math.sqrt(0.2) * xavier_std(block.qkv.weight), rel=0.1
    )
    for w in (block.conv1.weight, block.proj.weight, net.out_conv.weight):
        assert w.abs().max().item() <= 1e-5 * math.sqrt(6 / sum(w.shape[:2]) / w[0, 0].numel())
        assert w.abs().max().item() > 0


def test_spec_keys_build_the_same_network(ref):
    cfg = ref["config"]
    spec_model = {
        "preset": "edm_ddpmpp",
        "channels": cfg["model_channels"],
        "channel_mult": cfg["channel_mult"],
        "num_blocks": cfg["num_blocks"],
        "attention_resolutions": cfg["attn_resolutions"],
        "num_classes": cfg["label_dim"],
        "augment_dim": cfg["augment_dim"],
        "embed_dim": cfg["model_channels"] * cfg["channel_mult_emb"],
    }
    shape = (cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
    net = build_model(spec_model, "gaussian", shape)
    load_edm_state_dict(net, ref["state_dict"])  # strict: the same names and shapes
    assert count_parameters(net) == ref["n_params"]


def test_checkpoint_names_load_with_the_precond_prefix(ref):
    net = SongUNet(**ref["config"])
    load_edm_state_dict(net, {f"model.{k}": v for k, v in ref["state_dict"].items()})
    torch.testing.assert_close(net.map_layer0.weight, ref["state_dict"]["map_layer0.weight"])


@pytest.mark.parametrize(
    ("extra", "kind", "message"),
    [
        (
            {"preset": "edm_ddpmpp"},
            "masked",
            "edm_ddpmpp is a network for gaussian runs, not masked",
        ),
        ({"augment_dim": 9}, "gaussian", "augment_dim needs preset edm_ddpmpp"),
        ({"preset": "edm_ddpmpp", "embed_dim": 20}, "gaussian", "multiple of channels"),
    ],
)
def test_preset_misuse_is_a_user_error(extra, kind, message):
    cfg = {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1, **extra}
    with pytest.raises(UserError, match=message):
        build_model(cfg, kind, (1, 8, 8))
