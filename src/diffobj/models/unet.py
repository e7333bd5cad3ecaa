"""A U-Net in the DDPM++ family (Song et al. 2021, as in EDM's ``SongUNet``).

Residual blocks with GroupNorm and a noise-level embedding added before the second conv,
skip connections scaled by 1/sqrt(2), self-attention at chosen resolutions (and always in the
bottleneck), box-filter down/up sampling inside residual blocks. The noise level enters as
sinusoidal features of the log-SNR. Sized by ``channels``, ``channel_mult`` and ``num_blocks``:
one spec spans < 1M (the CPU default) to ~300M parameters; channels 128, mult [2, 2, 2],
4 blocks, attention at 16 is the DDPM++ CIFAR-10 network (~56M).

Two heads share the backbone:
- ``UNet`` (Gaussian): image in, same-shape raw output (eps, x0, v or F; see
  ``processes.gaussian.Denoiser``).
- ``MaskedUNet``: each channel value of each pixel is a token in 0..256 (256 = mask); every
  (channel, token) pair has its own learned embedding, summed per pixel; out come 256-way
  logits per channel per pixel, shape (B, 256, C, H, W) (MD4's pixel-space model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffobj.processes.masked import VOCAB

SKIP_SCALE = math.sqrt(0.5)
HEAD_DIM = 64  # attention heads of 64 channels (fast fused attention kernels)


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """The largest divisor of ``channels`` <= min(32, channels / 4): GroupNorm's group count."""
    limit = max(1, min(max_groups, channels // min_per_group))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero weights and bias: residual branches start as the identity (stable early training)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class LogSNREmbedding(nn.Module):
    """Sinusoidal features of the log-SNR at geometric frequencies.

    Frequencies span 1/64 to 16 radians per unit of log-SNR: the slowest resolves the whole
    usable range (|lam| <~ 30) without wrapping, the fastest resolves steps of ~0.1.
    """

    def __init__(self, dim: int, min_freq: float = 1 / 64, max_freq: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, log_snr: torch.Tensor) -> torch.Tensor:
        angles = log_snr.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class Resample(nn.Module):
    """Box-filter 2x down (average pool) or up (nearest), as DDPM++'s [1, 1] resample filter."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x


class Attention(nn.Module):
    """Multi-head self-attention over pixels, residual with the DDPM++ skip scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // HEAD_DIM)
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (b, heads, hw, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * SKIP_SCALE


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + embedding, GroupNorm-SiLU-dropout-conv; optional resample and attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        *,
        resample: str = "none",
        attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.out_channels = out_ch
        self.norm0 = norm(in_ch)
        self.resample = Resample(resample)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm1 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        needs_skip = in_ch != out_ch or resample != "none"
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if needs_skip else None
        self.attention = Attention(out_ch) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = self.resample(x)
        skip = self.skip(x) if self.skip is not None else x
        out = (h + skip) * SKIP_SCALE
        return self.attention(out) if self.attention is not None else out


class Conditioned:
    """The noise-level (and label) embedding of a network with ``noise_embed``, ``map``,
    ``label_embed`` and ``num_classes``: SiLU(map(features of lam) + label embedding), where
    ``labels=None`` means the "no label" class of classifier-free guidance."""

    def embedding(self, log_snr: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.map(self.noise_embed(log_snr))
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((emb.shape[0],), self.num_classes, device=emb.device)
            emb = emb + self.label_embed(labels)
        return F.silu(emb)


class Backbone(Conditioned, nn.Module):
    """The DDPM++ encoder-decoder on features of ``stem_channels`` at full resolution.

    ``resolution`` is the input height (width scales alike); level l works at resolution >> l.
    """

    def __init__(
        self,
        stem_channels: int,
        out_channels: int,
        resolution: int,
        *,
        channels: int,
        channel_mult: list[int],
        num_blocks: int,
        attention_resolutions: list[int],
        dropout: float = 0.0,
        num_classes: int = 0,
        embed_dim: int | None = None,
        out_kernel: int = 3,
    ):
        super().__init__()
        emb_dim = embed_dim or 4 * channels
        self.num_classes = num_classes
        self.noise_embed = LogSNREmbedding(channels)
        self.map = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # one extra class index = "no label": the unconditional model of classifier-free guidance
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        block = {"emb_dim": emb_dim, "dropout": dropout}
        attn = set(attention_resolutions)

        self.stem = nn.Conv2d(stem_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList()
        skips = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            res = resolution >> level
            if level > 0:
                self.encoder.append(ResBlock(ch, ch, resample="down", **block))
                skips.append(ch)
            for _ in range(num_blocks):
                self.encoder.append(ResBlock(ch, channels * mult, attention=res in attn, **block))
                ch = channels * mult
                skips.append(ch)

        # DDPM++ bottleneck: attention always, whatever attention_resolutions says
        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, attention=True, **block), ResBlock(ch, ch, **block)]
        )

        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = resolution >> level
            if level < len(channel_mult) - 1:
                self.decoder.append(ResBlock(ch, ch, resample="up", **block))
            for i in range(num_blocks + 1):
                last = i == num_blocks
                self.decoder.append(
                    ResBlock(
                        ch + skips.pop(), channels * mult, attention=last and res in attn, **block
                    )
                )
                ch = channels * mult
        self.out_norm = norm(ch)
        self.out_conv = zero_init(nn.Conv2d(ch, out_channels, out_kernel, padding=out_kernel // 2))

    def forward(
        self, h: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embedding(log_snr, labels)
        h = self.stem(h)
        skips = [h]
        for blk in self.encoder:
            h = blk(h, emb)
            skips.append(h)
        for blk in self.middle:
            h = blk(h, emb)
        for blk in self.decoder:
            if blk.resample.mode != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = blk(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


class UNet(nn.Module):
    """Gaussian head: x (B, C, H, W) and log-SNR (B,) -> raw output (B, C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], **config):
        super().__init__()
        c, h, _ = image_shape
        self.image_shape = tuple(image_shape)
        self.backbone = Backbone(c, c, h, **config)

    def forward(
        self, x: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.backbone(x, log_snr, labels)


class MaskedUNet(nn.Module):
    """Masked head: tokens (B, C, H, W) in 0..256 -> logits (B, 256, C, H, W).

    Each channel has its own table of 257 embeddings (256 values + mask); a pixel's features
    are the sum over its channels, which equals a linear map of the concatenated one-hots.
    """

    def __init__(self, image_shape: tuple[int, int, int], **config):
        super().__init__()
        c, h, _ = image_shape
        self.image_shape = tuple(image_shape)
        width = config["channels"]
        self.token_embed = nn.Embedding(c * (VOCAB + 1), width)
        offsets = torch.arange(c) * (VOCAB + 1)
        self.register_buffer("offsets", offsets.view(1, c, 1, 1), persistent=False)
        # logits read out per pixel (1x1): a 3x3 conv to 256 C channels would cost as much as
        # the rest of a small network
        self.backbone = Backbone(width, c * VOCAB, h, out_kernel=1, **config)

    def forward(
        self, tokens: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = tokens.shape
        emb = self.token_embed(tokens + self.offsets).sum(dim=1)  # (B, H, W, width)
        out = self.backbone(emb.permute(0, 3, 1, 2), log_snr, labels)
        return out.reshape(b, c, VOCAB, h, w).transpose(1, 2)
