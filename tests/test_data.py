"""Dataset preparation: each loader on small files written in the exact released format."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest

from diffobj.cli import main
from diffobj.data import load_prepared, load_source, prepare, read_images
from diffobj.data.fake import (
    FakeData,
    imagenet64_batch,
    random_images,
    write_cifar10,
    write_image_folder,
    write_imagenet64,
    write_mnist_idx,
)
from diffobj.errors import UserError

RNG = np.random.default_rng(0)


# -- scikit-learn digits --------------------------------------------------------------------------


def test_digits_are_sklearns_rescaled_to_0_255(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    loaded = load_source("sklearn_digits")
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(loaded.train.images, expected)
    np.testing.assert_array_equal(loaded.train.labels, digits.target)
    assert loaded.test is None


def test_prepare_digits_writes_split_and_meta(tmp_path):
    meta = prepare("sklearn_digits", tmp_path, pad=4, seed=3)
    train, train_labels, _ = load_prepared(tmp_path)
    test, test_labels, test_meta = load_prepared(tmp_path, "test")
    assert train.shape[1:] == (16, 16, 1) and train.dtype == np.uint8
    assert len(train) + len(test) == 1797 and len(test) == round(0.2 * 1797)
    assert meta["count"] == len(train) and test_meta["count"] == len(test)
    assert meta["resolution"] == 16 and meta["channels"] == 1 and meta["num_classes"] == 10
    assert meta["sha256"] == hashlib.sha256((tmp_path / "images.npy").read_bytes()).hexdigest()
    assert meta["split"] == {
        "rule": "random",
        "test_fraction": 0.2,
        "seed": 3,
        "test_dir": "test",
        "test_count": 359,
    }
    # the padding is zeros; the test indices pick the held-out images of the source order
    assert not train[:, :4].any() and not train[:, :, -4:].any()
    source = load_source("sklearn_digits").train
    indices = np.load(tmp_path / "test" / "indices.npy")
    np.testing.assert_array_equal(test[:, 4:12, 4:12], source.images[indices])
    np.testing.assert_array_equal(test_labels, source.labels[indices])
    assert set(indices).isdisjoint(set(range(1797)) - set(indices)) and len(set(indices)) == len(
        test
    )


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    prepare("sklearn_digits", tmp_path / "a", seed=1)
    prepare("sklearn_digits", tmp_path / "b", seed=1)
    prepare("sklearn_digits", tmp_path / "c", seed=2)
    a, b, c = (np.load(tmp_path / d / "test" / "indices.npy") for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_nearest_resize_doubles_each_pixel(tmp_path):
    prepare("sklearn_digits", tmp_path, resolution=16, resize_filter="nearest", test_fraction=0)
    images, _, meta = load_prepared(tmp_path)
    source = load_source("sklearn_digits").train.images
    np.testing.assert_array_equal(images, source.repeat(2, axis=1).repeat(2, axis=2))
    assert meta["split"]["test_count"] == 0 and not (tmp_path / "test").exists()


# -- MNIST idx ----------------------------------------------------------------------------------


def assert_loaded_is(loaded, fake: FakeData) -> None:
    np.testing.assert_array_equal(loaded.train.images, fake.train_images)
    np.testing.assert_array_equal(loaded.train.labels, fake.train_labels)
    np.testing.assert_array_equal(loaded.test.images, fake.test_images)
    np.testing.assert_array_equal(loaded.test.labels, fake.test_labels)


def test_mnist_idx_gz_and_raw(tmp_path):
    fake = write_mnist_idx(tmp_path, RNG)
    assert_loaded_is(load_source("mnist_idx", tmp_path), fake)


def test_mnist_padded_like_edm_keeps_the_source_split(tmp_path):
    fake = write_mnist_idx(tmp_path / "raw", RNG)
    meta = prepare("mnist_idx", tmp_path / "out", path=tmp_path / "raw", pad=2)
    test, _, _ = load_prepared(tmp_path / "out", "test")
    assert meta["resolution"] == 32 and meta["split"]["rule"] == "source"
    np.testing.assert_array_equal(test[:, 2:30, 2:30], fake.test_images)


def test_mnist_truncated_file_names_file(tmp_path):
    write_mnist_idx(tmp_path, RNG)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte: .*truncated"):
        load_source("mnist_idx", tmp_path)


def test_mnist_bad_magic_and_bad_gzip(tmp_path):
    write_mnist_idx(tmp_path, RNG)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">ii", 2051, 3) + b"\0\0\0")
    with pytest.raises(
        UserError, match=r"t10k-labels-idx1-ubyte: bad idx magic number 2051, expected 2049"
    ):
        load_source("mnist_idx", tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:30])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        load_source("mnist_idx", tmp_path)


def test_mnist_missing_folder_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_source("mnist_idx", None)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(UserError, match="no train-labels-idx1-ubyte"):
        load_source("mnist_idx", tmp_path)


# -- CIFAR-10 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tar,bytes_keys", [(True, False), (False, True)])
def test_cifar10_tarball_or_folder_str_or_bytes_keys(tmp_path, as_tar, bytes_keys):
    root = tmp_path / "cifar-10-python.tar.gz" if as_tar else tmp_path
    fake = write_cifar10(root, RNG, as_tar=as_tar, bytes_keys=bytes_keys)
    assert_loaded_is(load_source("cifar10", root), fake)


def test_cifar10_truncated_pickle_names_file(tmp_path):
    write_cifar10(tmp_path, RNG, as_tar=False)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError, match=r"data_batch_3: not a readable pickle"):
        load_source("cifar10", tmp_path)


def test_cifar10_wrong_row_length(tmp_path):
    write_cifar10(tmp_path, RNG, as_tar=False)
    bad = {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(UserError, match=r"test_batch: rows of 3000 values, expected 3\*32\*32"):
        load_source("cifar10", tmp_path)


def test_cifar10_missing_says_what_to_download(tmp_path):
    with pytest.raises(UserError, match=r"not found; download cifar-10-python.tar.gz"):
        load_source("cifar10", tmp_path / "nowhere")


def test_pickles_cannot_run_code(tmp_path):
    write_cifar10(tmp_path, RNG, as_tar=False)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_source("cifar10", tmp_path)


# -- downsampled ImageNet 64 ----------------------------------------------------------------------


@pytest.mark.parametrize("npz", [True, False])
def test_imagenet64_npz_or_pickle_labels_from_zero(tmp_path, npz):
    # batches 1, 2 and 10: read in numeric order (1, 2, 10), not as strings sort (1, 10, 2)
    fake = write_imagenet64(tmp_path, RNG, {1: 2, 2: 3, 10: 1}, val=2, npz=npz)
    assert_loaded_is(load_source("imagenet64", tmp_path), fake)


def test_imagenet64_errors(tmp_path):
    with pytest.raises(UserError, match="Imagenet64_train_part1.zip"):
        load_source("imagenet64", tmp_path)
    batch = imagenet64_batch(*random_images(RNG, 2, 64, 3, 1000))
    np.savez(tmp_path / "train_data_batch_1.npz", data=batch["data"])
    with pytest.raises(UserError, match=r"train_data_batch_1.npz: missing key 'labels'"):
        load_source("imagenet64", tmp_path)
    np.savez(tmp_path / "train_data_batch_1.npz", data=batch["data"], labels=np.array([0, 5]))
    with pytest.raises(UserError, match=r"train_data_batch_1.npz: label 0 below 1"):
        load_source("imagenet64", tmp_path)


# -- image folder / zip (EDM layout) --------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_and_zip_with_dataset_json(tmp_path, channels):
    images = RNG.integers(0, 256, (4, 8, 8, channels), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    write_image_folder(tmp_path / "folder", images, labels)
    with zipfile.ZipFile(tmp_path / "data.zip", "w", zipfile.ZIP_STORED) as archive:
        for f in sorted((tmp_path / "folder").rglob("*")):
            if f.is_file():
                archive.write(f, f.relative_to(tmp_path / "folder").as_posix())
    for root in (tmp_path / "folder", tmp_path / "data.zip"):
        loaded = load_source("image_folder", root)
        np.testing.assert_array_equal(loaded.train.images, images)
        np.testing.assert_array_equal(loaded.train.labels, labels)


def test_image_folder_without_labels_and_errors(tmp_path):
    write_image_folder(tmp_path, RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), None)
    assert load_source("image_folder", tmp_path).train.labels is None
    (tmp_path / "00000" / "img00000001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match=r"00000/img00000001.png: not a readable image"):
        load_source("image_folder", tmp_path)
    (tmp_path / "00000" / "img00000001.png").unlink()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", 1]]}))
    with pytest.raises(UserError, match=r"dataset.json: no label for 00000/img00000002.png"):
        load_source("image_folder", tmp_path)


def test_image_folder_sizes_must_agree(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "b.png")
    with pytest.raises(UserError, match=r"b.png: size \(8, 9\) differs from a.png's \(8, 8\)"):
        load_source("image_folder", tmp_path)


# -- the command --------------------------------------------------------------------------------


def test_cli_prepare_data_and_bad_input_writes_nothing(tmp_path, capsys):
    assert (
        main(
            [
                "prepare-data",
                "--source",
                "sklearn_digits",
                "--pad",
                "4",
                "--out",
                str(tmp_path / "ok"),
            ]
        )
        == 0
    )
    assert read_images(tmp_path / "ok" / "images.npy").shape == (1438, 16, 16, 1)
    out = tmp_path / "bad"
    assert (
        main(
            [
                "prepare-data",
                "--source",
                "sklearn_digits",
                "--test-fraction",
                "1.5",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--test-fraction must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(["prepare-data", "--source", "cifar10", "--out", str(out)]) == 2
    assert "cifar10 needs --path" in capsys.readouterr().err
    assert not out.exists()


def test_read_images_rejects_wrong_dtype_and_layout(tmp_path):
    np.save(tmp_path / "float.npy", np.zeros((2, 8, 8, 1), np.float32))
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 8, 8), np.uint8))
    np.savez(tmp_path / "samples.npz", other=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(UserError, match=r"float.npy: images must be uint8"):
        read_images(tmp_path / "float.npy")
    with pytest.raises(UserError, match=r"chw.npy: images must have shape \(N, H, W, C\)"):
        read_images(tmp_path / "chw.npy")
    with pytest.raises(UserError, match=r"samples.npz: no key 'images'"):
        read_images(tmp_path / "samples.npz")


def test_blur_keeps_constants_and_mass():
    from diffobj.data.arrays import blur_images

    flat = np.full((2, 6, 6, 3), 77, np.uint8)
    np.testing.assert_array_equal(blur_images(flat, 1.0), flat)
    dot = np.zeros((1, 9, 9, 1), np.uint8)
    dot[0, 4, 4, 0] = 255
    blurred = blur_images(dot, 0.7).astype(int)
    assert (
        blurred[0, 4, 4, 0] < 255 and abs(blurred.sum() - 255) <= 81 // 2
    )  # rounding of 81 pixels
    np.testing.assert_array_equal(blurred[0, :, :, 0], blurred[0, :, :, 0].T)  # isotropic


@pytest.mark.parametrize(
    ("source", "shape"),
    [
        ("cifar10", (32, 32, 3)),
        ("imagenet64", (64, 64, 3)),
        ("mnist_idx", (28, 28, 1)),
        ("image_folder", (16, 16, 3)),
    ],
)
def test_stand_ins_load_through_the_real_loaders(tmp_path, source, shape):
    from diffobj.data.fake import write_stand_in

    path = write_stand_in(source, tmp_path, RNG, train=12, test=4, side=16)
    loaded = load_source(source, path)
    # CIFAR-10 rounds up to five equal batches; the folder has no split of its own
    train = {"cifar10": 15, "image_folder": 16}.get(source, 12)
    assert loaded.train.images.shape == (train, *shape)
    assert loaded.test is None if source == "image_folder" else len(loaded.test.images) == 4
