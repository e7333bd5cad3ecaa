"""A small CNN classifier whose penultimate features give a Fréchet distance on small datasets.

Inception at 299x299 is meaningless for 8x8 digits and too slow on a CPU, so the embedded
default reports ``fd_classifier``: the Fréchet distance in the 64-d penultimate (post-ReLU)
features of this network, trained on the dataset's own labels (the MNIST precedent is the
"Fréchet LeNet distance"). It is not comparable to FID, nor across classifiers: a reference
records the sha256 of the classifier file it was made with.

The saved file (``torch.save``, loadable with ``weights_only=True``) holds ``format``,
``arch`` (the constructor arguments), ``state_dict``, ``test_accuracy`` and ``data`` (the
training set's meta).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffobj.errors import UserError
from diffobj.io import atomic_path

FORMAT = "diffobj-classifier-features-v1"


class FeatureClassifier(nn.Module):
    """conv3x3 - ReLU - conv3x3 - ReLU - maxpool2 - avgpool to 4x4 - linear(feature_dim) - ReLU - linear."""

    def __init__(
        self,
        channels: int,
        resolution: int,
        num_classes: int,
        width: int = 32,
        feature_dim: int = 64,
    ):
        super().__init__()
        self.arch = {
            "channels": channels,
            "resolution": resolution,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.hidden = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images x: float NCHW in [-1, 1]."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return F.relu(self.hidden(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the models' data scaling)."""
    return images.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log=print,
) -> FeatureClassifier:
    """Adam with a cosine learning rate on cross-entropy; no augmentation (digits are not flip-invariant)."""
    if labels is None:
        raise UserError("the classifier needs labels: the dataset has no labels.npy")
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    _, resolution, _, channels = images.shape
    model = FeatureClassifier(channels, resolution, int(labels.max()) + 1).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels.astype(np.int64))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for batch in order.split(batch_size):
            x = to_input(x_all[batch]).to(device)
            loss = F.cross_entropy(model(x), y_all[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        schedule.step()
        if log and (epoch + 1) % max(1, epochs // 5) == 0:
            log(
                f"epoch {epoch + 1}/{epochs}: loss {total / len(x_all):.4f} ({time.perf_counter() - start:.1f} s)"
            )
    return model.eval()


@torch.no_grad()
def accuracy(
    model: FeatureClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 512
) -> float:
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[start : start + batch_size])).to(device)
        pred = model(x).argmax(1).cpu().numpy()
        correct += int((pred == labels[start : start + batch_size]).sum())
    return correct / len(images)


def save_classifier(model: FeatureClassifier, path: str | Path, **info: Any) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "arch": model.arch, "state_dict": state, **info}, tmp)


def weights_digest(arch: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """A digest of what the features depend on: the architecture and the trained weights.

    The file's own bytes also hold its training time and torch's record names, so two
    trainings that give the same weights would otherwise name different features."""
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[FeatureClassifier, dict[str, Any]]:
    """The classifier and the rest of its file (test_accuracy, data)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: classifier not found (train one with `diffobj train-features`)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on corrupt files
        raise UserError(f"{path}: not a readable classifier file ({type(err).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a diffobj classifier file (format {saved.get('format') if isinstance(saved, dict) else None!r})"
        )
    model = FeatureClassifier(**saved["arch"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit the architecture ({str(err).splitlines()[0]})"
        ) from None
    info = {k: v for k, v in saved.items() if k not in ("state_dict", "format")}
    return model.eval().requires_grad_(False).to(device), info
