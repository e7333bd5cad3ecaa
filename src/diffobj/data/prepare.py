"""Prepare a dataset into the one layout every job reads.

``prepare(source, out, ...)`` writes::

    OUT/images.npy        train split, uint8 (N, H, W, C)
    OUT/labels.npy        int64 (N,)           (absent when the source has no labels)
    OUT/meta.json         name, source, resolution, channels, count, sha256 of images.npy,
                          labels, num_classes, split, transform
    OUT/test/images.npy   held-out split, same format   (absent when the test split is empty)
    OUT/test/labels.npy
    OUT/test/indices.npy  int64: each test image's index in the source order (train then test)
    OUT/test/meta.json    the same keys, for the test split

Split: the source's own train/test split (MNIST, CIFAR-10, ImageNet64) unless ``test_fraction``
is given, in which case all images are pooled and a seeded permutation holds out
round(fraction * N) of them. Sources without a split (digits, image folders) default to 0.2.

Transform, in order: zero padding by ``pad`` pixels on each side (EDM pads MNIST 28 -> 32), then a
resize to ``resolution`` x ``resolution`` with a PIL filter (LANCZOS like EDM's dataset_tool)
when the padded size differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffobj.data.arrays import sha256_file
from diffobj.data.loaders import Loaded, Split, load_source
from diffobj.errors import UserError
from diffobj.io import atomic_path, write_json

DEFAULT_TEST_FRACTION = 0.2
RESIZE_FILTERS = ("lanczos", "bilinear", "bicubic", "box", "nearest")
TEST_DIR = "test"


@dataclass
class Prepared:
    train: Split
    test: Split | None
    test_indices: np.ndarray | None
    meta: dict[str, Any]


def prepare(
    source: str,
    out: str | Path,
    *,
    path: str | Path | None = None,
    name: str | None = None,
    resolution: int | None = None,
    pad: int = 0,
    resize_filter: str = "lanczos",
    test_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load ``source``, split, transform and write it under ``out``; returns the train meta."""
    prepared = build(
        source,
        path=path,
        name=name,
        resolution=resolution,
        pad=pad,
        resize_filter=resize_filter,
        test_fraction=test_fraction,
        seed=seed,
    )
    return write(prepared, Path(out))


def build(
    source: str,
    *,
    path: str | Path | None = None,
    name: str | None = None,
    resolution: int | None = None,
    pad: int = 0,
    resize_filter: str = "lanczos",
    test_fraction: float | None = None,
    seed: int = 0,
) -> Prepared:
    """Everything of ``prepare`` except writing: all validation happens here, before any output."""
    if pad < 0:
        raise UserError(f"--pad must be >= 0, got {pad}")
    if resolution is not None and resolution < 1:
        raise UserError(f"--resolution must be >= 1, got {resolution}")
    if resize_filter not in RESIZE_FILTERS:
        raise UserError(f"--resize-filter must be one of {RESIZE_FILTERS}, got {resize_filter!r}")
    loaded = load_source(source, path)
    train, test, test_indices, split_meta = split_dataset(loaded, test_fraction, seed)
    train = transform(train, pad, resolution, resize_filter)
    test = transform(test, pad, resolution, resize_filter) if test is not None else None
    labels = [s.labels for s in (train, test) if s is not None and s.labels is not None]
    meta = {
        "name": name or source,
        "source": source,
        "source_path": str(path) if path is not None else None,
        "description": loaded.description,
        "format": "uint8 NHWC",
        "labels": bool(labels),
        "num_classes": int(max(int(lab.max()) for lab in labels if lab.size) + 1)
        if labels
        else None,
        "split": split_meta,
        "transform": {"pad": pad, "resolution": resolution, "resize_filter": resize_filter},
    }
    return Prepared(train, test, test_indices, meta)


def split_dataset(
    loaded: Loaded, test_fraction: float | None, seed: int
) -> tuple[Split, Split | None, np.ndarray | None, dict]:
    """The source's own split, or a seeded random hold-out of ``test_fraction`` of all images."""
    if test_fraction is None and loaded.test is not None:
        n_train = len(loaded.train.images)
        indices = np.arange(n_train, n_train + len(loaded.test.images), dtype=np.int64)
        return loaded.train, loaded.test, indices, {"rule": "source"}
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    if not 0 <= fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {fraction}")
    pooled = loaded.train if loaded.test is None else _pool(loaded.train, loaded.test)
    n = len(pooled.images)
    n_test = int(round(fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    meta = {"rule": "random", "test_fraction": fraction, "seed": seed}
    return _take(pooled, train_idx), (_take(pooled, test_idx) if n_test else None), test_idx, meta


def _pool(a: Split, b: Split) -> Split:
    if a.images.shape[1:] != b.images.shape[1:]:
        raise UserError(
            f"cannot pool splits of image shapes {a.images.shape[1:]} and {b.images.shape[1:]}"
        )
    labels = None if a.labels is None or b.labels is None else np.concatenate([a.labels, b.labels])
    return Split(np.concatenate([a.images, b.images]), labels)


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], None if split.labels is None else split.labels[idx])


def transform(split: Split, pad: int, resolution: int | None, resize_filter: str) -> Split:
    images = split.images
    if pad:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    height, width = images.shape[1:3]
    if resolution is not None and (height, width) != (resolution, resolution):
        images = resize_images(images, resolution, resize_filter)
    elif height != width:
        raise UserError(
            f"images are {height}x{width}; only square images are supported (crop them first)"
        )
    return Split(images, split.labels)


def resize_images(
    images: np.ndarray, resolution: int, resize_filter: str = "lanczos"
) -> np.ndarray:
    """Each uint8 image resized to resolution x resolution with a PIL filter."""
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise UserError("--resolution needs Pillow: `pip install 'diffobj[data]'`") from None
    if images.shape[1] != images.shape[2]:
        raise UserError(
            f"images are {images.shape[1]}x{images.shape[2]}; only square images can be resized"
        )
    resample = getattr(Image.Resampling, resize_filter.upper())
    grey = images.shape[-1] == 1
    out = [
        np.asarray(
            Image.fromarray(img[..., 0] if grey else img).resize((resolution, resolution), resample)
        )
        for img in images
    ]
    stacked = np.stack(out)
    return stacked[..., None] if grey else stacked


def write(prepared: Prepared, out: Path) -> dict[str, Any]:
    """Write the layout of the module docstring; each file atomically, meta.json last."""
    train_meta = _write_split(prepared.train, out, {**prepared.meta, "subset": "train"})
    if prepared.test is not None:
        test_dir = out / TEST_DIR
        with atomic_path(test_dir / "indices.npy") as tmp:
            np.save(tmp, prepared.test_indices)
        test_meta = _write_split(prepared.test, test_dir, {**prepared.meta, "subset": "test"})
        write_json(test_dir / "meta.json", test_meta)
        train_meta["split"] = {
            **train_meta["split"],
            "test_dir": TEST_DIR,
            "test_count": test_meta["count"],
        }
    else:
        train_meta["split"] = {**train_meta["split"], "test_dir": None, "test_count": 0}
    write_json(out / "meta.json", train_meta)
    return train_meta


def _write_split(split: Split, folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    images_path = folder / "images.npy"
    with atomic_path(images_path) as tmp:
        np.save(tmp, np.ascontiguousarray(split.images, dtype=np.uint8))
    if split.labels is not None:
        with atomic_path(folder / "labels.npy") as tmp:
            np.save(tmp, split.labels.astype(np.int64))
    n, height, _, channels = split.images.shape
    head = {
        "name": meta["name"],
        "source": meta["source"],
        "resolution": int(height),
        "channels": int(channels),
        "count": int(n),
        "sha256": sha256_file(images_path),
    }
    return {**head, **{k: v for k, v in meta.items() if k not in head}}
