"""A residual MLP denoiser for small images (the 8×8 default: 64 dimensions).

On 8×8 images a U-Net spends its time in per-layer overhead: each 3×3 convolution sees a
handful of pixels and every level adds GroupNorm, resampling and skip copies. A residual MLP
over the flattened image has the whole image in one receptive field from the first layer and
costs a few matrix products per step, so the same CPU budget buys many more training steps.

Blocks are pre-norm residual MLPs modulated by the noise (and label) embedding, scale and
shift as in DiT's adaLN, with the last layer of every block zero-initialised so that the
network starts as a function of the embedding alone. The noise level enters as the same
sinusoidal log-SNR features the U-Net uses.

Two heads share the trunk, with the interfaces of ``unet.UNet`` and ``unet.MaskedUNet``:
- ``MLP`` (Gaussian): x (B, C, H, W) -> raw output (B, C, H, W); the trunk returns features
  per pixel, read out by one small MLP shared by all pixels that also sees the pixel's own
  noisy value (``PixelHead``).
- ``MaskedMLP``: tokens 0..256 (256 = mask) -> logits (B, 256, C, H, W). Every value shares
  one token embedding (as MD4's shared embedding) plus a learned position embedding; the trunk
  returns a small feature vector per position, read out by one shared linear map to 256 logits,
  so the head costs D·width instead of D·256·width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffobj.models.unet import Conditioned, LogSNREmbedding, zero_init
from diffobj.processes.masked import VOCAB

TOKEN_DIM = 16  # per-position features of the masked head (in and out)


class Block(nn.Module):
    """LayerNorm, modulated by (scale, shift) from the embedding; Linear-SiLU-Linear; residual."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(emb_dim, 2 * width)
        self.fc0 = nn.Linear(width, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = zero_init(nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb).chunk(2, dim=1)
        u = self.norm(h) * (1 + scale) + shift
        return h + self.fc1(self.dropout(F.silu(self.fc0(u))))


class Trunk(Conditioned, nn.Module):
    """in_dim features -> ``num_blocks`` residual blocks of ``channels`` -> out_dim features."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        channels: int,
        num_blocks: int,
        dropout: float = 0.0,
        num_classes: int = 0,
        embed_dim: int | None = None,
        **_unet_only,  # channel_mult, attention_resolutions: shapes of the U-Net, not of an MLP
    ):
        super().__init__()
        emb_dim = embed_dim or channels
        self.num_classes = num_classes
        self.noise_embed = LogSNREmbedding(min(channels, 256))
        self.map = nn.Sequential(
            nn.Linear(min(channels, 256), emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # one extra class index = "no label": the unconditional model of classifier-free guidance
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Linear(in_dim, channels)
        self.blocks = nn.ModuleList(Block(channels, emb_dim, dropout) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(channels, eps=1e-6)
        self.out = zero_init(nn.Linear(channels, out_dim))

    def forward(
        self, h: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embedding(log_snr, labels)
        h = self.stem(h)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


class PixelHead(nn.Module):
    """One small MLP shared by every pixel: the pixel's trunk features and Fourier features of
    its own noisy value -> its output.

    Denoising at low noise is a per-pixel function of the pixel's value (snap it to the data's
    grid), the same function for every pixel: shared weights learn it once, where the trunk
    alone would learn it 64 times. The Fourier features (VDM, Kingma et al. 2021, App. C) resolve
    the fine scale of that function: periods 2^-n of the [-1, 1] range, down to a few of the 256
    levels.
    """

    FREQUENCIES = 2.0 ** torch.arange(1, 9)  # pi·2^n for n = 1..8

    def __init__(self, features: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("freqs", math.pi * self.FREQUENCIES, persistent=False)
        self.fc0 = nn.Linear(features + 1 + 2 * len(self.FREQUENCIES), hidden)
        self.fc1 = zero_init(nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """features (B, D, k), values (B, D) -> (B, D)."""
        angles = values[..., None] * self.freqs
        h = torch.cat([features, values[..., None], angles.sin(), angles.cos()], dim=-1)
        return self.fc1(F.silu(self.fc0(h))).squeeze(-1)


class MLP(nn.Module):
    """Gaussian head: x (B, C, H, W) and log-SNR (B,) -> raw output (B, C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], **config):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.dims = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.trunk = Trunk(self.dims, self.dims * TOKEN_DIM, **config)
        self.head = PixelHead(TOKEN_DIM)

    def forward(
        self, x: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b = x.shape[0]
        values = x.reshape(b, self.dims)
        features = self.trunk(values, log_snr, labels).view(b, self.dims, TOKEN_DIM)
        return self.head(features, values).view(x.shape)


class MaskedMLP(nn.Module):
    """Masked head: tokens (B, C, H, W) in 0..256 -> logits (B, 256, C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], **config):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.dims = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.token_embed = nn.Embedding(VOCAB + 1, TOKEN_DIM)
        self.position_embed = nn.Parameter(torch.zeros(self.dims, TOKEN_DIM))
        self.trunk = Trunk(self.dims * TOKEN_DIM, self.dims * TOKEN_DIM, **config)
        # not zero-initialised: the token's own embedding then reaches the logits from the first
        # step (zero here cost 15.3 -> 38.2 classifier FD after 1000 steps on digits)
        self.readout = nn.Linear(TOKEN_DIM, VOCAB)

    def forward(
        self, tokens: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b = tokens.shape[0]
        h = self.token_embed(tokens.reshape(b, self.dims)) + self.position_embed
        features = self.trunk(h.reshape(b, -1), log_snr, labels).view(b, self.dims, TOKEN_DIM)
        logits = self.readout(features + h)  # (B, D, 256); h: the token itself reaches the output
        return logits.transpose(1, 2).reshape(b, VOCAB, *tokens.shape[1:])
