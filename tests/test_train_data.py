"""Training data: images.npy is memory-mapped (one page-cache copy per node, not 2-3 loaded
copies per rank), and the batches read from it are the images the stream names, NCHW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffobj.run_config import RunConfig
from diffobj.training.train_data import load_data, model_input, on_gpu


def saved(tmp_path, n: int = 40, labels: bool = False) -> RunConfig:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npy"
    np.save(path, rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8))
    if labels:
        np.save(tmp_path / "labels.npy", rng.integers(0, 10, n))
    raw = {"run_id": "r", "data": {"images": str(path)}, "model": {"num_classes": 10}}
    return RunConfig("r", raw)


def test_images_are_mapped_not_loaded_and_batches_are_the_named_images(tmp_path):
    config = saved(tmp_path, labels=True)
    data = load_data(config, torch.device("cpu"), need_labels=True)
    assert isinstance(data.images, np.memmap)
    assert Path(data.images.filename) == config.data_path.resolve()
    assert (data.count, data.image_shape) == (40, (3, 5, 6))
    expected = torch.from_numpy(np.load(config.data_path)).permute(0, 3, 1, 2)
    idx = torch.tensor([7, 3, 39, 3, 0, 21])  # unsorted, with a repeat
    batch = data.batch(idx, torch.device("cpu"))
    assert batch.is_contiguous() and torch.equal(batch, expected[idx])
    labels = torch.from_numpy(np.load(tmp_path / "labels.npy"))
    assert torch.equal(data.labels_of(idx, torch.device("cpu")), labels[idx])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_small_dataset_moves_to_the_gpu_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr("diffobj.training.train_data.COPY_CHUNK", 7)  # chunks that do not divide 40
    config = saved(tmp_path)
    images = np.load(config.data_path)
    gpu = on_gpu(np.load(config.data_path, mmap_mode="r"), torch.device("cuda"))
    assert torch.equal(gpu.cpu(), torch.from_numpy(images).permute(0, 3, 1, 2))
    data = load_data(config, torch.device("cuda"), need_labels=False)
    x = model_input(
        data.batch(torch.tensor([4, 1]), torch.device("cuda")), "gaussian", data.images.device
    )
    assert x.is_contiguous(memory_format=torch.channels_last)
