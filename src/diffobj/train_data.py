"""A run's training images on the device, their labels, and the seeded order they are drawn in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffobj.data.arrays import read_images, read_labels
from diffobj.devices import Dist, gpu_switches
from diffobj.errors import UserError
from diffobj.run_config import RunConfig
from diffobj.seeds import ORDER, step_seed

ON_DEVICE_BYTES = (
    4 << 30
)  # datasets up to 4 GiB live on the GPU; larger ones stream from pinned RAM


@dataclass
class TrainData:
    images: torch.Tensor  # uint8 (N, C, H, W), on the device or pinned on the host
    labels: torch.Tensor | None

    @property
    def count(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_data(config: RunConfig, device: torch.device, need_labels: bool) -> TrainData:
    images = read_images(config.data_path)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
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
    if device.type == "cuda":
        tensor = tensor.to(device) if tensor.numel() <= ON_DEVICE_BYTES else tensor.pin_memory()
        labels = labels.to(device) if labels is not None else None
    return TrainData(tensor, labels)


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
    x = images_u8.to(device, non_blocking=True)
    x = x.float() / 127.5 - 1 if kind == "gaussian" else x.long()
    return x.contiguous(memory_format=torch.channels_last) if gpu_switches(device) else x
