"""Image arrays as every job sees them: uint8, (N, H, W, C), C in {1, 3}.

``read_images`` is the one reader for user-supplied image files (a prepared ``images.npy`` or a
``samples.npz`` with key ``images``); it checks dtype and shape and names the file when they
are wrong, so no metric ever runs on float images or a CHW array by accident.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from diffobj.errors import UserError

CHANNELS = (1, 3)


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """``images`` if it is uint8 (N, H, W, C) with C in {1, 3}; a UserError naming ``where`` if not."""
    if not isinstance(images, np.ndarray):
        raise UserError(f"{where}: expected a numpy array of images, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise UserError(f"{where}: images must be uint8 in 0..255, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in CHANNELS:
        raise UserError(
            f"{where}: images must have shape (N, H, W, C) with C in {CHANNELS}, got {images.shape}"
        )
    if images.shape[0] == 0:
        raise UserError(f"{where}: no images (shape {images.shape})")
    return images


def read_images(path: str | Path, key: str = "images", mmap: bool = False) -> np.ndarray:
    """uint8 NHWC images from ``.npy`` or from key ``key`` of an ``.npz`` (e.g. samples.npz);
    ``mmap``: a ``.npy`` read-only memory-mapped (pages read on use, shared between processes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if key not in archive.files:
                    raise UserError(f"{path}: no key {key!r} (keys: {sorted(archive.files)})")
                images = archive[key]
        else:
            images = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable numpy file ({err})") from None
    return check_images(images, str(path))


def read_labels(path: str | Path, count: int) -> np.ndarray:
    """int64 labels, one per image."""
    path = Path(path)
    try:
        labels = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: labels file not found") from None
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable numpy file ({err})") from None
    if labels.ndim != 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{path}: expected {count} integer labels, got dtype {labels.dtype} shape {labels.shape}"
        )
    return labels.astype(np.int64)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def blur_images(images: np.ndarray, sigma: float, radius: int | None = None) -> np.ndarray:
    """uint8 NHWC images blurred by a separable Gaussian of ``sigma`` pixels (edges replicated),
    rounded back to uint8: the "degraded real data" of metric sanity checks."""
    import torch
    import torch.nn.functional as F

    radius = radius if radius is not None else max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).float()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
