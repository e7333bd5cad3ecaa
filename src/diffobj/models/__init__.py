"""Denoiser backbones with process-specific heads; ``build_model`` is the one constructor.

>>> net = build_model({"channels": 32, "channel_mult": [1, 2], "num_blocks": 1,
...                    "attention_resolutions": [4]}, "gaussian", (1, 8, 8))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from diffobj.errors import UserError
from diffobj.models.mlp import MLP, MaskedMLP
from diffobj.models.unet import MaskedUNet, UNet

KINDS = ("gaussian", "masked")
# preset -> (Gaussian head, masked head)
PRESETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "diffobj_unet": (UNet, MaskedUNet),
    "mlp": (MLP, MaskedMLP),
}
# keys of the spec's Model that shape the network ("name" and "label_dropout" do not)
ARCH_KEYS = (
    "channels",
    "channel_mult",
    "num_blocks",
    "attention_resolutions",
    "dropout",
    "num_classes",
    "embed_dim",
)
DEFAULTS: dict[str, Any] = {
    "attention_resolutions": [],
    "dropout": 0.0,
    "num_classes": 0,
    "embed_dim": None,
}


def build_model(model_cfg: Mapping[str, Any], kind: str, image_shape: Sequence[int]) -> nn.Module:
    """The network for a run: the spec's ``preset`` (default the U-Net) with the head of ``kind``
    (Gaussian: raw output for ``Denoiser``; masked: 256-way logits per dimension).

    ``model_cfg`` holds the keys of the spec's ``models`` entry; ``image_shape`` is (C, H, W).
    A model that does not fit the data (a resolution not divisible by 2^(levels-1), an
    attention resolution the network never reaches) is a UserError naming the value.
    """
    if kind not in KINDS:
        raise UserError(f"process kind must be one of {KINDS}, got {kind!r}")
    config = {**DEFAULTS, **{k: model_cfg[k] for k in ARCH_KEYS if k in model_cfg}}
    name = model_cfg.get("name", "<model>")
    shape = tuple(int(s) for s in image_shape)
    preset = model_cfg.get("preset", "diffobj_unet")
    if preset not in PRESETS:
        raise UserError(f"model {name!r}: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "diffobj_unet":
        check_fits(config, shape, name)
    gaussian_head, masked_head = PRESETS[preset]
    return (gaussian_head if kind == "gaussian" else masked_head)(shape, **config)


def resolutions(height: int, levels: int) -> list[int]:
    """The feature-map heights of the U-Net's levels."""
    return [height >> level for level in range(levels)]


def check_fits(config: Mapping[str, Any], image_shape: tuple[int, ...], name: str) -> None:
    where = f"model {name!r}"
    if len(image_shape) != 3:
        raise UserError(f"{where}: image shape must be (C, H, W), got {image_shape}")
    c, h, w = image_shape
    mult = list(config.get("channel_mult") or [])
    if not mult or any(int(m) <= 0 for m in mult):
        raise UserError(
            f"{where}: channel_mult must be a non-empty list of positive integers, got {mult}"
        )
    for key in ("channels", "num_blocks"):
        if int(config[key]) <= 0:
            raise UserError(f"{where}: {key} must be positive, got {config[key]}")
    factor = 2 ** (len(mult) - 1)
    if h % factor or w % factor:
        raise UserError(
            f"{where}: channel_mult {mult} has {len(mult)} levels, so the image size must be "
            f"divisible by {factor}; the data is {h}x{w}"
        )
    reached = resolutions(h, len(mult))
    for res in config.get("attention_resolutions") or []:
        if res not in reached:
            raise UserError(
                f"{where}: attention_resolutions has {res}, but on {h}x{w} images the network "
                f"works at resolutions {reached}"
            )
    embed_dim = config.get("embed_dim")
    if embed_dim is not None and int(embed_dim) <= 0:
        raise UserError(f"{where}: embed_dim must be positive, got {embed_dim}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MLP",
    "PRESETS",
    "MaskedMLP",
    "MaskedUNet",
    "UNet",
    "build_model",
    "check_fits",
    "count_parameters",
]
