"""MD4's CIFAR-10 network (Shi et al. 2024; google-deepmind/md4, networks/unet.py after VDM),
written for diffobj: a single-resolution U-Net over token embeddings.

- every channel value (0..255, 256 = mask) has one embedding of ``channels`` features, shared
  by the colour channels; a pixel's C embeddings are concatenated (C x channels features);
- the noise level enters as MD4's time t: sinusoidal features of 1000 t (max period 1e4,
  [sin, cos]), then Dense(4 ch) - swish - Dense(ch); a class label's embedding is concatenated
  to the time features first. t is recovered from the log-SNR through MD4's linear schedule
  alpha = (1 - 2e-4)(1 - t) + 1e-4 (exactly MD4's t for ``masked_linear``, a monotone feature
  of the noise level for any other schedule);
- a 3x3 input conv, ``num_blocks`` residual blocks, a middle block (res, 1-head attention, res),
  ``num_blocks + 1`` residual blocks on the concatenated skips, GroupNorm-swish-3x3 conv to
  256 logits per channel. Residual blocks add the conditioning through a bias-free Dense
  before the second GroupNorm, and are not rescaled (VDM's blocks);
- flax's default initialisation (truncated-normal LeCun weights, zero biases, embeddings of
  std 1/sqrt(ch)), with the conditioning Dense, each block's last conv and the output conv at
  zero, as MD4 writes them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffobj.models.unet import norm
from diffobj.processes.masked import VOCAB

MD4_EPS = 1e-4  # MD4's MaskingSchedule clips alpha to [eps, 1 - eps]
TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (flax's correction)


def lecun_(w: torch.Tensor, fan_in: int) -> torch.Tensor:
    """flax's lecun_normal: a normal truncated at 2 std, rescaled to variance 1/fan_in."""
    std = math.sqrt(1 / fan_in) / TRUNC_STD
    return nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


def lecun_init(layer: nn.Module, zero: bool = False) -> nn.Module:
    """lecun_normal weights (or zeros, where MD4 writes zeros_init); zero bias."""
    w = layer.weight
    if zero:
        nn.init.zeros_(w)
    else:
        lecun_(w, w[0].numel())
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def md4_time(log_snr: torch.Tensor) -> torch.Tensor:
    """MD4's t at a log-SNR under its linear schedule: alpha = sigmoid(lam) = (1-2e)(1-t) + e."""
    return 1 - (torch.sigmoid(log_snr.double()) - MD4_EPS) / (1 - 2 * MD4_EPS)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin, cos] of 1000 t at frequencies 1e4^(-i / (dim/2 - 1)), i < dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) / (half - 1) * torch.arange(half, device=t.device))
    angles = (1000 * t.float())[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, dropout: float):
        super().__init__()
        self.norm0 = norm(in_ch)
        self.conv0 = lecun_init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.cond = lecun_init(nn.Linear(cond_dim, out_ch, bias=False), zero=True)
        self.norm1 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = lecun_init(nn.Conv2d(out_ch, out_ch, 3, padding=1), zero=True)
        self.skip = lecun_init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x))) + self.cond(cond)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(nn.Module):
    """GroupNorm, one-head dot-product attention with q/k/v/out projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.attn = nn.MultiheadAttention(channels, 1, batch_first=True)
        for part in (
            *self.attn.in_proj_weight.view(3, channels, channels),
            self.attn.out_proj.weight,
        ):
            lecun_(part, channels)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.norm(x).flatten(2).transpose(1, 2)  # (b, hw, c)
        out, _ = self.attn(z, z, z, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class MD4UNet(nn.Module):
    """Masked head: tokens (B, C, H, W) in 0..256 and log-SNR (B,) -> logits (B, 256, C, H, W)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        channels: int = 128,
        num_blocks: int = 32,
        dropout: float = 0.1,
        num_classes: int = 0,
    ):
        super().__init__()
        c = image_shape[0]
        self.image_shape = tuple(image_shape)
        self.channels, self.num_classes = channels, num_classes
        # flax's Embed init: normal of std 1/sqrt(features)
        self.token_embed = nn.Embedding(VOCAB + 1, channels)
        nn.init.normal_(self.token_embed.weight, std=channels**-0.5)
        # one extra class = "no label" (diffobj's classifier-free convention; MD4: classes + 1)
        self.label_embed = nn.Embedding(num_classes + 1, channels) if num_classes else None
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=channels**-0.5)
        cond_in = channels * (2 if num_classes else 1)
        self.cond0 = lecun_init(nn.Linear(cond_in, 4 * channels))
        self.cond1 = lecun_init(nn.Linear(4 * channels, channels))
        self.stem = lecun_init(nn.Conv2d(c * channels, channels, 3, padding=1))
        block = {"cond_dim": channels, "dropout": dropout}
        self.down = nn.ModuleList(ResBlock(channels, channels, **block) for _ in range(num_blocks))
        self.mid0 = ResBlock(channels, channels, **block)
        self.mid_attn = Attention(channels)
        self.mid1 = ResBlock(channels, channels, **block)
        self.up = nn.ModuleList(
            ResBlock(2 * channels, channels, **block) for _ in range(num_blocks + 1)
        )
        self.out_norm = norm(channels)
        self.out_conv = lecun_init(nn.Conv2d(channels, c * VOCAB, 3, padding=1), zero=True)

    def conditioning(self, log_snr: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        feats = timestep_features(md4_time(log_snr), self.channels)
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((len(feats),), self.num_classes, device=feats.device)
            feats = torch.cat([feats, self.label_embed(labels)], dim=1)
        return self.cond1(F.silu(self.cond0(feats)))

    def forward(
        self, tokens: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = tokens.shape
        cond = self.conditioning(log_snr, labels)
        # (B, C, H, W, ch) -> (B, C * ch, H, W): channel c's features at c * ch ... (MD4's reshape)
        x = self.token_embed(tokens).permute(0, 1, 4, 2, 3).reshape(b, c * self.channels, h, w)
        x = self.stem(x)
        skips = [x]
        for blk in self.down:
            x = blk(x, cond)
            skips.append(x)
        x = self.mid1(self.mid_attn(self.mid0(x, cond)), cond)
        for blk in self.up:
            x = blk(torch.cat([x, skips.pop()], dim=1), cond)
        logits = self.out_conv(F.silu(self.out_norm(x)))
        return logits.reshape(b, c, VOCAB, h, w).transpose(1, 2)
