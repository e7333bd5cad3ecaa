"""The estimators' data on the device: training images as points in [-1, 1] (Gaussian) or as
tokens 0..255 (masked), and the working memory one (queries x data) tile may use."""

from __future__ import annotations

import numpy as np
import torch

CPU_TILE_BYTES = 256 * 2**20  # working memory of one (queries x data) tile on CPU
GPU_MEMORY_FRACTION = 0.5  # share of free GPU memory a tile may use


def images_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, ...) images as float32 (N, D) in [-1, 1] (x = u8 / 127.5 - 1), in place: one
    float32 copy at the peak (ImageNet 64: 63 GB, not 126 GB)."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    return flat.to(torch.float32).div_(127.5).sub_(1)


def images_to_tokens(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, ...) images as (N, D) tokens 0..255 (each channel of each pixel one token)."""
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1).copy())


def tile_budget(device: torch.device) -> int:
    """Bytes one tile of work may use: a share of free GPU memory, or a fixed CPU budget."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_FRACTION)
    return CPU_TILE_BYTES
