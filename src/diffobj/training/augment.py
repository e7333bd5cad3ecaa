"""EDM's non-leaking augmentation (Karras et al. 2022, after ADA, Karras et al. 2020).

Each training image is transformed, each kind of transform with its own probability, and the
network is told what was done through 9 augmentation labels. Sampling feeds zero labels (no
labels), i.e. asks for un-augmented images: the augmentations do not leak into the samples.

The transforms and their laws are EDM's CIFAR-10 set (its train.py: xflip=1e8, yflip=1,
scale=1, rotate_frac=1, aniso=1, translate_frac=1, times p):
- x-flip with probability 1/2 whenever p > 0 (multiplier 1e8), y-flip with probability p/2;
- isotropic scaling by 2^(0.2 w), w ~ N(0, 1), with probability p;
- rotation by a uniform angle in [-pi, pi], with probability p;
- anisotropic scaling by (2^(0.2 w), 2^(-0.2 w)) along axes rotated by a uniform angle (with
  probability 1/2, else the image axes), with probability p;
- translation by (0.125 W w_x, 0.125 H w_y), w ~ N(0, 1), with probability p.
Labels, in EDM's order (so EDM's trained weights read them): [xflip, yflip, w_scale,
cos(theta) - 1, sin(theta), w_aniso cos(r), w_aniso sin(r), w_x, w_y]; all zero = identity.

The geometric transforms are one affine map per image, resampled as EDM does (``warp``:
reflect padding, 2x oversampling through the sym6 wavelet filter, bilinear sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from diffobj import processes
from diffobj.errors import UserError
from diffobj.run_config import RunConfig
from diffobj.seeds import Draws
from diffobj.seeds import draw as draw_rows

AUGMENT_DIM = 9


@dataclass(frozen=True)
class AugmentPipe:
    """Probability ``p`` times each transform's multiplier; EDM's CIFAR-10 defaults."""

    p: float
    xflip: float = 1e8
    yflip: float = 1.0
    scale: float = 1.0
    rotate: float = 1.0
    aniso: float = 1.0
    translate: float = 1.0
    scale_std: float = 0.2  # log2 standard deviation
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_std: float = 0.125  # of the image size

    def draw(self, n: int, generator: Draws, device: torch.device) -> Transform:
        """Per-image parameters; a transform not drawn for an image has its identity value."""

        def gated(values: torch.Tensor, prob: float) -> torch.Tensor:
            u = draw_rows(torch.rand, (values.shape[-1],), generator, device=device)
            return torch.where(u < prob, values, torch.zeros_like(values))

        def uniform(scale: float) -> torch.Tensor:
            return (draw_rows(torch.rand, (n,), generator, device=device) * 2 - 1) * scale

        def bit() -> torch.Tensor:
            return draw_rows(partial(torch.randint, 2), (n,), generator, device=device).float()

        def normal(*shape: int) -> torch.Tensor:
            return draw_rows(torch.randn, (*shape, n), generator, dim=-1, device=device)

        p = self.p
        xflip = gated(bit(), self.xflip * p)
        yflip = gated(bit(), self.yflip * p)
        scale = gated(normal(), self.scale * p)
        rotate = gated(uniform(math.pi), self.rotate * p)
        aniso, angle = normal(), uniform(math.pi)
        aniso = gated(aniso, self.aniso * p)
        angle = gated(angle, self.aniso_rotate_prob)  # EDM: not scaled by p
        shift = gated(normal(2), self.translate * p)
        return Transform(xflip, yflip, scale, rotate, aniso, angle, shift[0], shift[1], self)

    def __call__(self, images: torch.Tensor, generator: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented images (N, C, H, W) and their labels (N, 9)."""
        t = self.draw(images.shape[0], generator, images.device)
        return t.apply(images), t.labels()


@dataclass(frozen=True)
class Transform:
    """One draw of the pipeline: per-image tensors of length N."""

    xflip: torch.Tensor  # 0 / 1
    yflip: torch.Tensor
    scale: torch.Tensor  # w: scale 2^(scale_std w)
    rotate: torch.Tensor  # angle (rad)
    aniso: torch.Tensor  # w: scales 2^(+-aniso_std w)
    aniso_angle: torch.Tensor  # r: the axes of the anisotropic scaling
    shift_x: torch.Tensor  # in units of translate_std * W
    shift_y: torch.Tensor
    pipe: AugmentPipe

    def labels(self) -> torch.Tensor:
        r = self.aniso_angle
        cols = [
            self.xflip,
            self.yflip,
            self.scale,
            self.rotate.cos() - 1,
            self.rotate.sin(),
            self.aniso * r.cos(),
            self.aniso * r.sin(),
            self.shift_x,
            self.shift_y,
        ]
        return torch.stack(cols, dim=1).float()

    def inverse_matrix(self, height: int, width: int) -> torch.Tensor:
        """(N, 3, 3): output pixel -> input pixel, in pixels about the image centre (x right,
        y down): scale^-1 . rotation^-1 . aniso^-1 . shift^-1, EDM's order of composition."""
        pipe = self.pipe
        s = torch.exp2(self.scale * pipe.scale_std)
        a = torch.exp2(self.aniso * pipe.aniso_std)
        r = self.aniso_angle
        g = scaling(1 / s, 1 / s) @ rotation(self.rotate) @ rotation(-r)
        g = g @ scaling(1 / a, a) @ rotation(r)
        shift = torch.stack([self.shift_x * width, self.shift_y * height], 1) * pipe.translate_std
        return g @ translation(-shift)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The transformed images, in the memory format they came in (channels_last on a GPU:
        the resampling's convolutions return NCHW, which the network would convert back)."""
        return self._transform(images).contiguous(memory_format=memory_format(images))

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.where(self.xflip[:, None, None, None] > 0, images.flip(3), images)
        images = torch.where(self.yflip[:, None, None, None] > 0, images.flip(2), images)
        moved = (self.scale != 0) | (self.rotate != 0) | (self.aniso != 0)
        moved = moved | (self.shift_x != 0) | (self.shift_y != 0)
        if not bool(moved.any()):
            return images
        warped = warp(images, self.inverse_matrix(images.shape[2], images.shape[3]))
        # images left in place are not resampled (bilinear at the pixel centres rounds)
        return torch.where(moved[:, None, None, None], warped, images)


def memory_format(images: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided batch, else contiguous (NCHW)."""
    last = images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if last and not images.is_contiguous() else torch.contiguous_format


def rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], 1).reshape(-1, 3, 3)


def scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([sx, z, z, z, sy, z, z, z, o], 1).reshape(-1, 3, 3)


def translation(shift: torch.Tensor) -> torch.Tensor:
    """(N, 2) in pixels -> (N, 3, 3)."""
    g = torch.eye(3, dtype=shift.dtype, device=shift.device).repeat(len(shift), 1, 1)
    g[:, :2, 2] = shift
    return g


# the symlet-6 low-pass filter (Daubechies' least-asymmetric wavelet, orthonormal: unit norm,
# orthogonal to its even shifts), EDM's anti-aliasing filter
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)  # fmt: skip


def _filter(x: torch.Tensor, taps: torch.Tensor, dim: int, pad: int, stride: int = 1):
    """Depthwise 1-D correlation of x (N, C, H, W) with ``taps`` along ``dim`` (2 = y, 3 = x)."""
    c, k = x.shape[1], len(taps)
    size = (k, 1) if dim == 2 else (1, k)
    weight = taps.to(x.dtype).reshape(1, 1, *size).expand(c, 1, *size).contiguous()
    padding, strides = ((pad, 0), (stride, 1)) if dim == 2 else ((0, pad), (1, stride))
    return F.conv2d(x, weight, stride=strides, padding=padding, groups=c)


def _upsample(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """2x along ``dim``: zeros between the samples, then the low-pass filter (a convolution)."""
    z = torch.stack([x, torch.zeros_like(x)], dim=dim + 1).flatten(dim, dim + 1)
    z = z.narrow(dim, 0, z.shape[dim] - 1)
    return _filter(z, taps.flip(0), dim, (len(taps) + 1) // 2)


def _about(g: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """The map g seen in coordinates u' = scale u + shift (both axes)."""
    to = torch.tensor([[scale, 0, shift], [0, scale, shift], [0, 0, 1]], dtype=g.dtype)
    to = to.to(g.device)
    return to @ g @ torch.linalg.inv(to)


def warp(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """out(u) = images(inverse @ u), u in pixels about the centre, resampled as EDM does:
    reflect-pad by as much as the warp reaches (over the batch), upsample 2x through SYM6,
    sample bilinearly (zeros outside), filter and decimate back. Up and down through an
    orthonormal filter is the identity, so the one interpolation happens at twice the
    resolution; a linear image stays exactly linear away from the padding."""
    n, c, h, w = images.shape
    taps = torch.tensor(SYM6, dtype=torch.float64, device=images.device)
    border = len(SYM6) // 4
    inverse = inverse.to(torch.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor(
        [[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], device=inverse.device
    )
    reach = (inverse @ corners.to(inverse.dtype))[:, :2]  # (n, xy, corner)
    need = torch.stack([(-reach).amax((0, 2)), reach.amax((0, 2))])  # (low|high, xy)
    need = need + torch.tensor([2 * border - cx, 2 * border - cy], device=need.device)
    limit = torch.tensor([w - 1, h - 1], dtype=need.dtype, device=need.device)
    (x0, y0), (x1, y1) = need.clamp(min=0).minimum(limit).ceil().int().tolist()
    padded = F.pad(images, [x0, x1, y0, y1], mode="reflect")
    shift = torch.eye(3, dtype=inverse.dtype, device=inverse.device)
    shift[0, 2], shift[1, 2] = (x0 - x1) / 2, (y0 - y1) / 2
    g = shift @ inverse  # about the padded image's centre
    up = _upsample(_upsample(padded, taps, 3), taps, 2)
    # pixel centres: u_up = 2 u + 1/2 about the centres of the two grids
    g = _about(g, 2.0, -0.5)
    out_h, out_w = 2 * (h + 2 * border), 2 * (w + 2 * border)
    to_in = torch.diag(torch.tensor([2 / up.shape[3], 2 / up.shape[2], 1.0], dtype=g.dtype))
    from_out = torch.diag(torch.tensor([out_w / 2, out_h / 2, 1.0], dtype=g.dtype))
    theta = to_in.to(g.device) @ g @ from_out.to(g.device)
    grid = F.affine_grid(theta[:, :2].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
    sampled = F.grid_sample(up, grid, "bilinear", padding_mode="zeros", align_corners=False)
    pad = (len(SYM6) - 1) // 2
    x = _filter(sampled, taps, 3, pad, stride=2)[..., border:-border]
    return _filter(x, taps, 2, pad, stride=2)[..., border:-border, :]


def for_run(config: RunConfig) -> AugmentPipe | None:
    """The run's pipeline from ``training.augment_p`` (None when 0); the network must take the
    9 labels (preset edm_ddpmpp with augment_dim 9), and the data must be continuous."""
    p = float(config.training.get("augment_p", 0.0) or 0.0)
    if p == 0:
        return None
    model = config.model
    where = f"run {config.run_id}: training.augment_p {p}"
    if not processes.get(config.kind).continuous:
        raise UserError(f"{where}: augmentation is for Gaussian runs, not {config.kind}")
    if model.get("preset") != "edm_ddpmpp" or int(model.get("augment_dim", 0)) != AUGMENT_DIM:
        raise UserError(
            f"{where} needs model {model.get('name')!r} with preset edm_ddpmpp and augment_dim "
            f"{AUGMENT_DIM}, got preset {model.get('preset')!r}, augment_dim "
            f"{model.get('augment_dim', 0)}"
        )
    return AugmentPipe(p=p)
