"""Stand-in datasets written in the released file formats: random pixels, real layouts.

A rehearsal (``diffobj rehearse``) and the loaders' tests need files that the loaders read
through exactly the code that reads the real downloads, without the downloads. Each writer
lays random uint8 images and labels out as the original distribution does and returns the
arrays it wrote, so a test can compare what a loader reads with what was written:

- CIFAR-10 python version: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``,
  each a pickled dict whose ``data`` rows hold the red plane, then green, then blue (1024 values
  each, row-major), in a ``.tar.gz`` or an unpacked folder;
- downsampled ImageNet 64x64: ``train_data_batch_<k>`` and ``val_data``, pickled dicts or
  ``.npz`` with ``data`` (N, 12288, planes as CIFAR's) and 1-indexed ``labels``;
- MNIST idx: big-endian headers (magic 2051 / 2049), gzip-compressed or raw;
- an image folder in EDM's dataset_tool layout: ``00000/img00000000.png`` and ``dataset.json``.

The data are noise: what a model learns from them, and every score of them, means nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_SIDE = 32
IMAGENET64_SIDE = 64
IMAGENET64_CLASSES = 1000
MNIST_SIDE = 28


@dataclass
class FakeData:
    """What a writer wrote: images (N, H, W, C) uint8 and labels int64 (0-indexed) per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def random_images(
    rng: np.random.Generator, n: int, side: int, channels: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """n random uint8 images (n, side, side, channels) and labels in [0, num_classes)."""
    images = rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8)
    return images, rng.integers(0, num_classes, n).astype(np.int64)


def planes(images: np.ndarray) -> np.ndarray:
    """NHWC images as CIFAR / ImageNet-64 rows: the red plane, then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


# -- CIFAR-10 ---------------------------------------------------------------------------------


def cifar10_batch(images: np.ndarray, labels: np.ndarray, bytes_keys: bool = False) -> bytes:
    """One pickled CIFAR-10 batch; ``bytes_keys``: keys as bytes, as Python 2 pickled them."""
    batch = {
        "batch_label": "rehearsal batch of random images",
        "data": planes(images),
        "labels": [int(v) for v in labels],
        "filenames": [f"random_{i}.png" for i in range(len(images))],
    }
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2)


def write_cifar10(
    path: str | Path,
    rng: np.random.Generator,
    per_batch: int = 2,
    test: int = 3,
    as_tar: bool = True,
    bytes_keys: bool = False,
) -> FakeData:
    """CIFAR-10's python version at ``path``: the ``.tar.gz`` itself (``as_tar``) or a folder
    holding ``cifar-10-batches-py/``; five training batches of ``per_batch`` images each."""
    path = Path(path)
    files: dict[str, bytes] = {}
    train = [random_images(rng, per_batch, CIFAR10_SIDE, 3, 10) for _ in range(5)]
    for i, (x, y) in enumerate(train, start=1):
        files[f"data_batch_{i}"] = cifar10_batch(x, y, bytes_keys)
    test_x, test_y = random_images(rng, test, CIFAR10_SIDE, 3, 10)
    files["test_batch"] = cifar10_batch(test_x, test_y, bytes_keys)
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, 2)
    if as_tar:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (path / CIFAR10_DIR).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (path / CIFAR10_DIR / name).write_bytes(data)
    return FakeData(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x,
        test_y,
    )


# -- downsampled ImageNet 64 --------------------------------------------------------------------


def imagenet64_batch(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of one batch; ``labels`` 0-indexed here, stored 1-indexed as released."""
    return {
        "data": planes(images),
        "labels": np.asarray(labels) + 1,
        "mean": np.zeros(IMAGENET64_SIDE**2 * 3),
    }


def write_imagenet64(
    folder: str | Path,
    rng: np.random.Generator,
    train: Mapping[int, int] | None = None,
    val: int = 2,
    npz: bool = True,
) -> FakeData:
    """Batches ``train_data_batch_<k>`` (``train``: k -> images; default one batch of 4) and
    ``val_data`` in ``folder``, as ``.npz`` or as pickles (the two released forms)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = dict(train or {1: 4})
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, n in [*((f"train_data_batch_{k}", n) for k, n in train.items()), ("val_data", val)]:
        x, y = random_images(rng, n, IMAGENET64_SIDE, 3, IMAGENET64_CLASSES)
        batch = imagenet64_batch(x, y)
        if npz:
            np.savez(folder / f"{name}.npz", **batch)
        else:
            batch = {**batch, "labels": [int(v) for v in batch["labels"]]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (x, y)
    # the loader reads the training batches in numeric order: 1, 2, 10 (not 1, 10, 2)
    ordered = [written[f"train_data_batch_{k}"] for k in sorted(train)]
    return FakeData(
        np.concatenate([x for x, _ in ordered]),
        np.concatenate([y for _, y in ordered]),
        *written["val_data"],
    )


# -- MNIST idx ----------------------------------------------------------------------------------


def idx_images(images: np.ndarray) -> bytes:
    """idx3 bytes of (N, rows, cols) uint8 images."""
    n, rows, cols = images.shape
    return struct.pack(">iiii", 2051, n, rows, cols) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + np.asarray(labels).astype(np.uint8).tobytes()


def write_mnist_idx(
    folder: str | Path, rng: np.random.Generator, train: int = 5, test: int = 3
) -> FakeData:
    """The four idx files in ``folder``: the training pair gzip-compressed (as Debian ships
    them), the test pair raw (as npm's packages do), so both readers are exercised."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = random_images(rng, train, MNIST_SIDE, 1, 10)
    test_x, test_y = random_images(rng, test, MNIST_SIDE, 1, 10)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(train_x[..., 0])))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(train_y)))
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_images(test_x[..., 0]))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(test_y))
    return FakeData(train_x, train_y, test_x, test_y)


# -- image folder (EDM's dataset_tool layout) ---------------------------------------------------


def write_image_folder(
    root: str | Path, images: np.ndarray, labels: np.ndarray | list[int] | None
) -> None:
    """PNGs ``00000/img00000000.png`` ... and ``dataset.json`` (labels, or null without)."""
    from PIL import Image

    root = Path(root)
    entries = []
    for i, img in enumerate(images):
        idx = f"{i:08d}"
        name = f"{idx[:5]}/img{idx}.png"
        (root / idx[:5]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
            root / name, compress_level=0
        )
        entries.append([name, int(labels[i]) if labels is not None else None])
    (root / "dataset.json").write_text(
        json.dumps({"labels": entries if labels is not None else None})
    )


# -- one stand-in per source, for a rehearsal ---------------------------------------------------

# where each source's stand-in goes under a folder, and the path a spec then names
FAKE_NAMES = {
    "cifar10": "cifar-10-python.tar.gz",
    "imagenet64": "imagenet64",
    "mnist_idx": "mnist",
    "image_folder": "images",
}


def write_stand_in(
    source: str,
    folder: str | Path,
    rng: np.random.Generator,
    train: int,
    test: int,
    side: int = CIFAR10_SIDE,
) -> Path:
    """A stand-in for ``source`` with about ``train`` training and ``test`` held-out images
    (CIFAR-10 rounds the training set up to five equal batches) under ``folder``; returns the
    path a spec's ``datasets.<name>.path`` names. ``side``: the image folder's size."""
    if source not in FAKE_NAMES:
        raise ValueError(f"no stand-in for source {source!r} (it needs no file)")
    path = Path(folder) / FAKE_NAMES[source]
    if source == "cifar10":
        write_cifar10(path, rng, per_batch=-(-train // 5), test=test)
    elif source == "imagenet64":
        # two batches, numbered 1 and 10: the numeric order of the real ten is exercised
        write_imagenet64(path, rng, {1: train - train // 2, 10: train // 2}, val=test)
    elif source == "mnist_idx":
        write_mnist_idx(path, rng, train, test)
    else:
        images, labels = random_images(rng, train + test, side, 3, 10)
        write_image_folder(path, images, labels)
    return path
