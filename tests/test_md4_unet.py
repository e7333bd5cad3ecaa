"""The md4_unet preset: MD4's CIFAR-10 network, by its size, time input and head."""

from __future__ import annotations

import math

import pytest
import torch

from diffobj.errors import UserError
from diffobj.models import build_model, count_parameters
from diffobj.models.md4_unet import md4_time

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SMALL = {"preset": "md4_unet", "channels": 16, "channel_mult": [1], "num_blocks": 2}


def md4_parameter_count(c: int, d: int, layers: int, vocab: int = 256) -> int:
    """MD4's networks/unet.py + backward.py for images, counted layer by layer."""

    def res(i: int, o: int) -> int:  # GN, conv3x3, bias-free cond Dense, GN, conv3x3, 1x1 skip
        return 2 * i + (9 * i * o + o) + o * d + 2 * o + (9 * o * o + o) + (i * o + o) * (i != o)

    embed = (vocab + 1) * d
    cond = (d * 4 * d + 4 * d) + (4 * d * d + d)
    stem = 9 * c * d * d + d
    attention = 2 * d + (3 * d * d + 3 * d) + (d * d + d)
    blocks = layers * res(d, d) + 2 * res(d, d) + attention + (layers + 1) * res(2 * d, d)
    head = 2 * d + 9 * d * c * vocab + c * vocab
    return embed + cond + stem + blocks + head


def test_cifar10_size_is_md4s():
    cfg = {**SMALL, "channels": 128, "num_blocks": 32, "dropout": 0.1}  # cifar10.py
    net = build_model(cfg, "masked", (3, 32, 32))
    assert count_parameters(net) == md4_parameter_count(3, 128, 32)
    assert count_parameters(net) / 1e6 == pytest.approx(28.4, abs=0.1)  # "~28M"


def test_untrained_logits_are_uniform_and_shaped_per_channel():
    net = build_model(SMALL, "masked", (3, 8, 8))
    logits = net(torch.randint(0, 257, (2, 3, 8, 8)), torch.zeros(2))
    assert logits.shape == (2, 256, 3, 8, 8)
    assert torch.count_nonzero(logits) == 0  # MD4's zero-initialised output conv


def test_time_is_md4s_t_under_its_linear_schedule():
    """alpha(t) = (1 - 2e-4)(1 - t) + 1e-4 and lam = log(alpha / (1 - alpha)) give back t."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha = (1 - 2e-4) * (1 - t) + 1e-4
    torch.testing.assert_close(md4_time(torch.log(alpha / (1 - alpha))), t)


def test_output_depends_on_noise_level_tokens_and_label():
    torch.manual_seed(0)
    net = build_model({**SMALL, "num_classes": 10}, "masked", (3, 8, 8)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        z = torch.randint(0, 257, (1, 3, 8, 8)).repeat(3, 1, 1, 1)
        out = net(z, torch.tensor([0.0, 3.0, 0.0]), torch.tensor([1, 1, 2]))
        assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])
        # no labels = the extra "no label" class
        torch.testing.assert_close(
            net(z, torch.zeros(3)), net(z, torch.zeros(3), torch.full((3,), 10))
        )


def test_trains_in_a_masked_run(tmp_path):
    from test_train import quiet, run_config

    from diffobj.io import read_csv
    from diffobj.training.train import train

    cfg = run_config(tmp_path, "masked", model={**SMALL, "attention_resolutions": []}, steps=2)
    train(
        cfg,
        tmp_path / "run",
        quiet(),
    )
    assert math.isfinite(float(read_csv(tmp_path / "run" / "train_log.csv")[-1]["loss"]))


@pytest.mark.parametrize(
    ("cfg", "kind", "message"),
    [
        (SMALL, "gaussian", "md4_unet is a network for masked runs, not gaussian"),
        ({**SMALL, "channel_mult": [1, 2]}, "masked", "one resolution"),
    ],
)
def test_misuse_is_a_user_error(cfg, kind, message):
    with pytest.raises(UserError, match=message):
        build_model(cfg, kind, (3, 8, 8))
