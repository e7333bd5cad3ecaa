"""A run's training images on the device, their labels, and the seeded order they are drawn in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffobj import processes
from diffobj.data.arrays import read_images, read_labels
from diffobj.devices import Dist, gpu_switches
from diffobj.errors import UserError
from diffobj.run_config import RunConfig
from diffobj.seeds import ORDER, step_seed

ON_DEVICE_BYTES = 4 << 30  # datasets up to 4 GiB live on the GPU; larger ones stay in images.npy
COPY_CHUNK = 8192  # images per host -> GPU copy when a dataset moves to the GPU


@dataclass
class TrainData:
    """The training images: on the GPU (uint8 (N, C, H, W)) when they fit, else the
    memory-mapped images.npy (uint8 (N, H, W, C)), read a batch at a time. The mapped pages
    are the page cache of the file: one copy per node however many ranks read it, where a
    loaded copy (and its NCHW transpose, and a pinned copy for the GPU) cost each rank 2-3x
    the file (benchmarks/load_data_memory.py)."""

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor | None

    @property
    def count(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if isinstance(self.images, torch.Tensor):
            return tuple(self.images.shape[1:])
        n, h, w, c = self.images.shape
        return (c, h, w)

    def batch(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (B, C, H, W) images ``idx`` on ``device`` (channels_last on a GPU)."""
        if isinstance(self.images, torch.Tensor):
            return self.images[idx.to(self.images.device)]
        # sorted reads are sequential in the file; the batch is put back in the stream's order
        order, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        rows = torch.from_numpy(self.images[order.numpy()])[inverse].permute(0, 3, 1, 2)
        return rows.to(device) if device.type == "cuda" else rows.contiguous()

    def labels_of(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        if self.labels is None:
            return None
        return self.labels[idx.to(self.labels.device)].to(device)


def on_gpu(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The images as uint8 (N, C, H, W) on the GPU, copied a chunk at a time (no host copy)."""
    n, h, w, c = images.shape
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device)
    for start in range(0, n, COPY_CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + COPY_CHUNK]))  # one chunk read
        out[start : start + len(chunk)] = chunk.to(device).permute(0, 3, 1, 2)
    return out


def load_data(config: RunConfig, device: torch.device, need_labels: bool) -> TrainData:
    images = read_images(config.data_path, mmap=True)
    labels = None
    if need_labels:
        path = config.data_path.with_name("labels.npy")
        labels = torch.from_numpy(read_labels(path, len(images)))
        classes = int(config.model.get("num_classes", 0))
        if labels.min() < 0 or labels.max() >= classes:
            raise UserError(
                f"{path}: labels must be in 0..{classes - 1} (model num_classes), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
    if device.type == "cuda" and images.nbytes <= ON_DEVICE_BYTES:
        return TrainData(on_gpu(images, device), labels.to(device) if labels is not None else None)
    return TrainData(images, labels)


class DataOrder:
    """The seeded data stream: epoch e visits the images in a permutation seeded by (seed, e).

    The images of a step are a function of the step alone, so the data position to resume from
    is the step (``images_seen`` = step * batch).
    """

    def __init__(self, count: int, seed: int):
        self.count = count
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(step_seed(self.seed, 0, epoch, ORDER))
            self._cache = {epoch: torch.randperm(self.count, generator=g)}  # keep one epoch
        return self._cache[epoch]

    def indices(self, step: int, batch: int, dist_: Dist) -> torch.Tensor:
        """This rank's share of the stream positions [step * batch, (step + 1) * batch)."""
        share = batch // dist_.world
        positions = torch.arange(share) + step * batch + dist_.rank * share
        epochs = positions // self.count
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            sel = epochs == epoch
            out[sel] = self.permutation(epoch)[positions[sel] % self.count]
        return out


def model_input(images_u8: torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
    """Gaussian: x = u8 / 127.5 - 1 in [-1, 1]; masked: the integer pixels as tokens."""
    x = processes.get(kind).model_input(images_u8.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if gpu_switches(device) else x
