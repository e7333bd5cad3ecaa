"""EDM's DDPM++ network (Karras et al. 2022, ``SongUNet`` of NVlabs/edm), written for diffobj.

What makes it EDM's and not ``unet.UNet`` (the same family, diffobj's own choices):
- the noise level enters as c_noise = ln(sigma^)/4 = -lam/8 through a positional embedding
  (max_positions 1e4, endpoint=True: frequencies 1 ... 1e-4), emitted as [sin, cos];
- class labels are a one-hot vector scaled by sqrt(label_dim) through a Linear, and the 9
  augmentation labels through a bias-free Linear, both added *before* the mapping MLP;
- one attention head at every attention layer;
- EDM's initialisation: xavier_uniform weights and zero biases, the last conv of each residual
  branch, the attention output and the output conv scaled by 1e-5, qkv scaled by sqrt(0.2);
- down/up sampling by the ``resample_filter`` ([1, 1] = box filter for DDPM++).

``SongUNet(**config)`` takes EDM's own keyword arguments (the dict a network snapshot records);
``EDMDDPMpp`` is diffobj's view of it: net(x, log_snr, labels, augment_labels) with integer
labels (num_classes = "no label", which EDM writes as the zero one-hot).

Loading EDM weights: ``load_edm_state_dict(net, state_dict)``. The names are EDM's except:
- ``dec.{R}x{R}_aux_norm`` / ``dec.{R}x{R}_aux_conv`` (R = the input resolution) are
  ``out_norm`` / ``out_conv`` here;
- ``*.resample_filter`` buffers are not stored (rebuilt from the config), and must equal it;
- ``*.qkv`` rows: EDM orders them (head, channel, q|k|v); here (q|k|v, head, channel), the layout
  that splits into q, k, v by chunks for ``scaled_dot_product_attention``;
- a leading ``model.`` (EDMPrecond's attribute) is stripped, so the state_dict of EDM's
  ``EDMPrecond`` loads too. EDM's snapshots are pickles of its own classes: in EDM's
  environment, ``torch.save(pickle.load(f)['ema'].state_dict(), 'edm.pt')`` gives the dict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)
ZERO_SCALE = 1e-5  # EDM's "init_zero": near-zero, not zero, so every layer gets gradients
ATTN_SCALE = math.sqrt(0.2)


def edm_init(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """xavier_uniform(fan_in, fan_out incl. the kernel) x scale; bias zero."""
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv(in_ch: int, out_ch: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    return edm_init(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), scale)


def linear(in_f: int, out_f: int, bias: bool = True) -> nn.Linear:
    return edm_init(nn.Linear(in_f, out_f, bias=bias))


def group_norm(channels: int) -> nn.GroupNorm:
    """EDM's group count: min(32, channels // 4)."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """[sin, cos] of c_noise times frequencies (1/max_positions)^(i / (n/2 - 1)), i < n/2."""

    def __init__(self, dim: int, max_positions: float = 1e4):
        super().__init__()
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / (half - 1)  # endpoint=True
        self.register_buffer("freqs", (1 / max_positions) ** exponent, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(c_noise.float(), self.freqs)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class Resample(nn.Module):
    """2x down (filter, then stride 2) or up (transposed, stride 2) with a separable FIR filter."""

    def __init__(self, mode: str, taps: Sequence[float]):
        super().__init__()
        self.mode = mode
        f = torch.as_tensor(taps, dtype=torch.float32)
        self.register_buffer("filter", torch.outer(f, f) / f.sum().square(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        c, k = x.shape[1], self.filter.shape[-1]
        w = self.filter.to(x.dtype).expand(c, 1, k, k).contiguous()
        pad = (k - 1) // 2
        if self.mode == "down":
            return F.conv2d(x, w, stride=2, padding=pad, groups=c)
        return F.conv_transpose2d(x, 4 * w, stride=2, padding=pad, groups=c)


class Block(nn.Module):
    """EDM's UNetBlock in DDPM++ form: additive embedding, 1x1 skip, optional 1-head attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_ch: int,
        *,
        resample: str = "none",
        attention: bool = False,
        dropout: float = 0.0,
        resample_filter: Sequence[float] = (1, 1),
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.resample = Resample(resample, resample_filter)
        self.dropout = dropout
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv(in_ch, out_ch, 3)
        self.affine = linear(emb_ch, out_ch)
        self.norm1 = group_norm(out_ch)
        self.conv1 = conv(out_ch, out_ch, 3, ZERO_SCALE)
        needs_skip = in_ch != out_ch or resample != "none"
        self.skip = conv(in_ch, out_ch, 1) if needs_skip else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(out_ch)
            self.qkv = conv(out_ch, 3 * out_ch, 1, ATTN_SCALE)
            self.proj = conv(out_ch, out_ch, 1, ZERO_SCALE)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = self.resample(x)
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if not self.attention:
            return x
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(b, 3, 1, c, hh * ww).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (b, 1 head, hw, c)
        return (self.proj(a.transpose(-1, -2).reshape(b, c, hh, ww)) + x) * SKIP_SCALE


class SongUNet(nn.Module):
    """EDM's SongUNet (DDPM++ configuration) from EDM's keyword arguments.

    forward(x, noise_labels = c_noise, class_labels = one-hot (B, label_dim) or None,
    augment_labels (B, augment_dim) or None) -> F (B, out_channels, H, W).
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ):
        super().__init__()
        # NCSN++'s Fourier embedding and skip/residual encoders are not EDM's DDPM++: refuse them
        # rather than build a different network under this name
        for key, value, allowed in (
            ("embedding_type", embedding_type, "positional"),
            ("encoder_type", encoder_type, "standard"),
            ("decoder_type", decoder_type, "standard"),
        ):
            if value != allowed:
                raise ValueError(f"SongUNet here is DDPM++ only: {key} must be {allowed!r}")
        self.label_dim, self.augment_dim = label_dim, augment_dim
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        self.map_noise = PositionalEmbedding(noise_ch)
        self.map_label = linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = linear(noise_ch, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)

        block = {"emb_ch": emb_ch, "dropout": dropout, "resample_filter": resample_filter}
        attn = set(attn_resolutions)
        self.enc = nn.ModuleDict()
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = conv(in_channels, ch, 3)
            else:
                self.enc[f"{res}x{res}_down"] = Block(ch, ch, resample="down", **block)
            for i in range(num_blocks):
                out = model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = Block(ch, out, attention=res in attn, **block)
                ch = out
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:  # the bottleneck: attention always
                self.dec[f"{res}x{res}_in0"] = Block(ch, ch, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = Block(ch, ch, **block)
            else:
                self.dec[f"{res}x{res}_up"] = Block(ch, ch, resample="up", **block)
            for i in range(num_blocks + 1):
                out = model_channels * mult
                last = i == num_blocks
                self.dec[f"{res}x{res}_block{i}"] = Block(
                    ch + skips.pop(), out, attention=last and res in attn, **block
                )
                ch = out
        self.out_norm = group_norm(ch)
        self.out_conv = conv(ch, out_channels, 3, ZERO_SCALE)

    def embedding(
        self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, augment: torch.Tensor | None
    ) -> torch.Tensor:
        emb = self.map_noise(c_noise)
        if self.map_label is not None:
            onehot = class_labels if class_labels is not None else emb.new_zeros(len(emb), 1)
            if self.training and self.label_dropout:  # EDM's in-network dropout to "no label"
                keep = torch.rand(len(emb), 1, device=emb.device) >= self.label_dropout
                onehot = onehot * keep.to(onehot.dtype)
            emb = emb + self.map_label(
                onehot.expand(len(emb), self.label_dim) * self.label_dim**0.5
            )
        if self.map_augment is not None and augment is not None:
            emb = emb + self.map_augment(augment.to(emb.dtype))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embedding(noise_labels, class_labels, augment_labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, Block) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:  # the decoder blocks that take a skip
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMDDPMpp(nn.Module):
    """diffobj's interface to ``SongUNet``: net(x, log_snr, labels, augment_labels) -> F.

    c_noise = ln(sigma^)/4 = -log_snr/8; integer labels become one-hot, the index
    ``num_classes`` (diffobj's "no label") the zero vector, as EDM's label dropout writes it.
    """

    def __init__(self, image_shape: tuple[int, int, int], **edm_config):
        super().__init__()
        c, h, _ = image_shape
        self.image_shape = tuple(image_shape)
        self.model = SongUNet(img_resolution=h, in_channels=c, out_channels=c, **edm_config)

    def forward(
        self,
        x: torch.Tensor,
        log_snr: torch.Tensor,
        labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        onehot = None
        if self.model.label_dim and labels is not None:
            onehot = F.one_hot(labels.long(), self.model.label_dim + 1)[:, :-1].to(x.dtype)
        return self.model(x, -log_snr / 8, onehot, augment_labels)


# -- EDM's parameter names -----------------------------------------------------------------------


def _is_out_layer(key: str, resolution: int) -> str | None:
    m = re.fullmatch(rf"dec\.{resolution}x{resolution}_aux_(norm|conv)\.(weight|bias)", key)
    return f"out_{m.group(1)}.{m.group(2)}" if m else None


def _qkv_rows_from_edm(w: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """EDM's (head, channel, q|k|v) row order -> (q|k|v, head, channel)."""
    c = w.shape[0] // 3
    return w.reshape(heads, c // heads, 3, *w.shape[1:]).movedim(2, 0).reshape(w.shape)


def convert_edm_state_dict(
    state_dict: Mapping[str, torch.Tensor], net: SongUNet
) -> dict[str, torch.Tensor]:
    """EDM's SongUNet (or EDMPrecond) state_dict -> this module's names and layouts."""
    resolution = next(iter(net.enc)).split("x")[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        if key.endswith(".resample_filter"):
            block = net.get_submodule(key.rsplit(".", 2)[0])
            taps = block.resample.filter.to(value)
            if not torch.allclose(value.reshape(taps.shape), taps):
                raise ValueError(f"{key}: EDM's resample filter differs from this network's")
            continue
        key = _is_out_layer(key, int(resolution)) or key
        out[key] = _qkv_rows_from_edm(value) if re.search(r"\.qkv\.(weight|bias)$", key) else value
    return out


def load_edm_state_dict(
    net: EDMDDPMpp | SongUNet, state_dict: Mapping[str, torch.Tensor]
) -> EDMDDPMpp | SongUNet:
    """Load EDM-named weights (strict: every parameter present, nothing left over)."""
    song = net.model if isinstance(net, EDMDDPMpp) else net
    song.load_state_dict(convert_edm_state_dict(state_dict, song), strict=True)
    return net
