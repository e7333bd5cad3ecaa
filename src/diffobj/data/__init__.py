"""Datasets in one layout: uint8 NHWC ``images.npy``, int64 ``labels.npy``, ``meta.json``.

- ``prepare(source, out, ...)``: read a released format and write the layout (see
  ``diffobj.data.prepare`` for the files and the split rule).
- ``load_prepared(folder, subset)``: the images, labels and meta of a prepared split.
- ``read_images(path)``: checked uint8 NHWC images from ``.npy`` or an ``.npz`` key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffobj.data.arrays import check_images, read_images, read_labels, sha256_file
from diffobj.data.loaders import LOADERS, Loaded, Split, load_source
from diffobj.data.prepare import TEST_DIR, prepare
from diffobj.errors import UserError

SOURCES = tuple(LOADERS)

__all__ = [
    "SOURCES",
    "TEST_DIR",
    "Loaded",
    "Split",
    "check_images",
    "load_prepared",
    "load_source",
    "prepare",
    "read_images",
    "read_labels",
    "sha256_file",
]


def load_prepared(
    folder: str | Path, subset: str = "train"
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(images, labels or None, meta) of a prepared dataset's ``train`` or ``test`` split."""
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    folder = Path(folder) / (TEST_DIR if subset == "test" else "")
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: not found; prepare the dataset with `diffobj prepare-data`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{meta_path}: not valid JSON ({err})") from None
    images = read_images(folder / "images.npy")
    labels_path = folder / "labels.npy"
    labels = read_labels(labels_path, len(images)) if labels_path.is_file() else None
    return images, labels, meta
