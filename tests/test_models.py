"""The U-Net backbones: shapes, sizes, and clear errors when a model does not fit the data."""

from __future__ import annotations

import pytest
import torch

from diffobj.errors import UserError
from diffobj.models import build_model, count_parameters
from diffobj.models.unet import group_count
from diffobj.objectives.schedules import Level
from diffobj.processes.gaussian import Denoiser

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


TINY = {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attention_resolutions": [4]}


def level_of(log_snr: torch.Tensor) -> Level:
    alpha2 = torch.sigmoid(log_snr.double())
    zero = torch.zeros_like(alpha2)
    return Level(zero, log_snr.double(), zero, alpha2.sqrt(), (1 - alpha2).sqrt(), zero)


def perturb(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised output layers hide the inputs)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_gaussian_head_keeps_the_image_shape():
    net = build_model(
        {**TINY, "channel_mult": [1, 2, 2], "attention_resolutions": [8]}, "gaussian", (3, 16, 16)
    )
    out = net(torch.randn(5, 3, 16, 16), torch.linspace(-5, 5, 5))
    assert out.shape == (5, 3, 16, 16)


def test_masked_head_gives_256_logits_per_channel_value():
    net = build_model(TINY, "masked", (3, 8, 8))
    tokens = torch.randint(0, 257, (4, 3, 8, 8))  # 256 = the mask token
    assert net(tokens, torch.zeros(4)).shape == (4, 256, 3, 8, 8)


def test_untrained_networks_are_neutral():
    """Zero-initialised residual branches and output: eps_hat = 0, uniform masked logits."""
    z = torch.randn(3, 1, 8, 8)
    eps_hat = Denoiser(build_model(TINY, "gaussian", (1, 8, 8)))(z, level_of(torch.zeros(3)))
    assert torch.count_nonzero(eps_hat) == 0
    logits = build_model(TINY, "masked", (1, 8, 8))(torch.full((3, 1, 8, 8), 256), torch.zeros(3))
    assert torch.count_nonzero(logits - logits[:, :1]) == 0


def test_output_depends_on_noise_level_and_label():
    net = perturb(build_model({**TINY, "num_classes": 10}, "gaussian", (1, 8, 8))).eval()
    x = torch.randn(2, 1, 8, 8).repeat(2, 1, 1, 1)
    lam = torch.tensor([0.0, 0.0, 3.0, 3.0])
    out = net(x, lam)
    assert not torch.allclose(out[0], out[2])
    with_labels = net(x, lam, torch.tensor([1, 2, 1, 2]))
    assert not torch.allclose(with_labels[0], out[0])
    # no labels = the extra "no label" class (classifier-free guidance's unconditional model)
    torch.testing.assert_close(net(x, lam, torch.full((4,), 10)), out)


def test_ddpmpp_cifar10_size():
    """EDM's DDPM++ CIFAR-10 network (channels 128, mult 2-2-2, 4 blocks, attention at 16)
    has 55.7M parameters; the same spec here builds the same size."""
    cfg = {
        "channels": 128,
        "channel_mult": [2, 2, 2],
        "num_blocks": 4,
        "attention_resolutions": [16],
    }
    assert count_parameters(build_model(cfg, "gaussian", (3, 32, 32))) / 1e6 == pytest.approx(
        55.7, abs=0.1
    )


def test_size_grows_with_channels():
    small = count_parameters(build_model(TINY, "gaussian", (1, 8, 8)))
    large = count_parameters(build_model({**TINY, "channels": 32}, "gaussian", (1, 8, 8)))
    assert 3.5 < large / small < 4.1  # convolutions dominate: parameters ~ channels^2


@pytest.mark.parametrize(
    ("cfg", "shape", "message"),
    [
        ({**TINY, "channel_mult": [1, 2, 2, 2]}, (1, 12, 12), "divisible by 8; the data is 12x12"),
        ({**TINY, "attention_resolutions": [2]}, (1, 8, 8), "attention_resolutions has 2"),
        ({**TINY, "channel_mult": []}, (1, 8, 8), "channel_mult must be a non-empty list"),
    ],
)
def test_model_that_does_not_fit_the_data_is_a_user_error(cfg, shape, message):
    with pytest.raises(UserError, match=message):
        build_model({**cfg, "name": "tiny"}, "gaussian", shape)


def test_unknown_kind_is_a_user_error():
    with pytest.raises(UserError, match="process kind"):
        build_model(TINY, "uniform", (1, 8, 8))


@pytest.mark.parametrize("channels", [4, 6, 18, 32, 96, 256, 640])
def test_group_count_divides_the_channels(channels):
    g = group_count(channels)
    assert channels % g == 0 and 1 <= g <= 32 and channels // g >= min(4, channels)


MLP = {"preset": "mlp", "channels": 32, "num_blocks": 2}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4)])
def test_mlp_heads_have_the_unet_interfaces(shape):
    x = torch.randn(4, *shape)
    tokens = torch.randint(0, 257, (4, *shape))
    lam = torch.linspace(-3, 3, 4)
    assert build_model(MLP, "gaussian", shape)(x, lam).shape == x.shape
    assert build_model(MLP, "masked", shape)(tokens, lam).shape == (4, 256, *shape)


def test_mlp_starts_at_zero_and_then_depends_on_every_input():
    net = build_model({**MLP, "num_classes": 10}, "gaussian", (1, 8, 8))
    x, lam = torch.randn(3, 1, 8, 8), torch.zeros(3)
    assert torch.equal(net(x, lam), torch.zeros_like(x))  # zero-initialised residual and output
    perturb(net)
    base = net(x, lam, torch.tensor([1, 2, 3]))
    x2 = x.clone()
    x2[0, 0, 7, 7] += 1.0  # one pixel moves every output of that image: one receptive field
    assert (net(x2, lam, torch.tensor([1, 2, 3]))[0] != base[0]).all()
    assert not torch.allclose(net(x, lam + 1, torch.tensor([1, 2, 3])), base)
    assert not torch.allclose(net(x, lam, torch.tensor([4, 2, 3]))[0], base[0])


def test_an_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="preset must be one of"):
        build_model({**MLP, "preset": "resnet"}, "gaussian", (1, 8, 8))
