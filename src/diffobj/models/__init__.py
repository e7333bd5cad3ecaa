"""Denoiser backbones with process-specific heads; ``build_model`` is the one constructor.

>>> net = build_model({"channels": 32, "channel_mult": [1, 2], "num_blocks": 1,
...                    "attention_resolutions": [4]}, "gaussian", (1, 8, 8))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from diffobj.errors import UserError
from diffobj.models.edm_unet import EDMDDPMpp, load_edm_state_dict
from diffobj.models.md4_unet import MD4UNet
from diffobj.models.mlp import MLP, MaskedMLP
from diffobj.models.unet import MaskedUNet, UNet
from diffobj.processes import KINDS

Head = Callable[[dict[str, Any], tuple[int, ...], str, int], nn.Module]
# preset -> the network it builds for each process it serves: "diffobj_unet" (unet.py) and
# "mlp" (the residual MLP for small images, mlp.py) for both; "edm_ddpmpp", EDM's SongUNet
# (edm_unet.py), Gaussian only; "md4_unet", MD4's single-resolution U-Net (md4_unet.py), masked
HEADS: dict[str, dict[str, Head]] = {
    "diffobj_unet": {
        "gaussian": lambda config, shape, name, _: UNet(shape, **config),
        "masked": lambda config, shape, name, _: MaskedUNet(shape, **config),
    },
    "mlp": {
        "gaussian": lambda config, shape, name, _: MLP(shape, **config),
        "masked": lambda config, shape, name, _: MaskedMLP(shape, **config),
    },
    "edm_ddpmpp": {
        "gaussian": lambda config, shape, name, augment_dim: EDMDDPMpp(
            shape, **edm_config(config, augment_dim, name)
        ),
    },
    "md4_unet": {"masked": lambda config, shape, name, _: md4_model(config, shape, name)},
}
PRESETS = tuple(HEADS)
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
    """The network for a run: the spec's ``preset`` with the head of ``kind`` (Gaussian: raw
    output for ``Denoiser``; masked: 256-way logits per dimension).

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
    augment_dim = int(model_cfg.get("augment_dim", 0) or 0)
    if preset not in PRESETS:
        raise UserError(f"model {name!r}: preset must be one of {PRESETS}, got {preset!r}")
    if kind not in HEADS[preset]:
        raise UserError(
            f"model {name!r}: preset {preset} is a network for {' and '.join(HEADS[preset])} "
            f"runs, not {kind}"
        )
    if preset != "mlp":  # the MLP has no levels: channel_mult and attention do not shape it
        check_fits(config, shape, name)
    if augment_dim and preset != "edm_ddpmpp":
        raise UserError(f"model {name!r}: augment_dim needs preset edm_ddpmpp, not {preset}")
    return HEADS[preset][kind](config, shape, name, augment_dim)


def edm_config(config: Mapping[str, Any], augment_dim: int, name: str) -> dict[str, Any]:
    """The spec's model keys as EDM's SongUNet arguments (DDPM++: the remaining defaults).

    Label dropout stays with the trainer (the "no label" index), so the network gets 0.
    """
    channels = int(config["channels"])
    embed_dim = config.get("embed_dim") or 4 * channels
    if embed_dim % channels:
        raise UserError(
            f"model {name!r}: edm_ddpmpp needs embed_dim a multiple of channels "
            f"(EDM's channel_mult_emb), got embed_dim {embed_dim} for channels {channels}"
        )
    return {
        "model_channels": channels,
        "channel_mult": list(config["channel_mult"]),
        "channel_mult_emb": embed_dim // channels,
        "num_blocks": int(config["num_blocks"]),
        "attn_resolutions": list(config["attention_resolutions"] or []),
        "dropout": float(config["dropout"]),
        "label_dim": int(config["num_classes"]),
        "augment_dim": augment_dim,
        "label_dropout": 0.0,
    }


def md4_model(config: Mapping[str, Any], shape: tuple[int, ...], name: str) -> MD4UNet:
    if list(config["channel_mult"]) != [1] or config["attention_resolutions"]:
        raise UserError(
            f"model {name!r}: md4_unet works at one resolution: it needs channel_mult [1] and "
            f"no attention_resolutions, got {list(config['channel_mult'])} and "
            f"{list(config['attention_resolutions'])}"
        )
    return MD4UNet(
        shape,
        channels=int(config["channels"]),
        num_blocks=int(config["num_blocks"]),
        dropout=float(config["dropout"]),
        num_classes=int(config["num_classes"]),
    )


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
    "EDMDDPMpp",
    "MD4UNet",
    "MLP",
    "MaskedMLP",
    "MaskedUNet",
    "UNet",
    "build_model",
    "check_fits",
    "count_parameters",
    "load_edm_state_dict",
]
