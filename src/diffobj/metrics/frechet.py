"""Fréchet distance between Gaussians fitted to features, and its float64 statistics.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

The trace term uses the symmetric form tr sqrt(S1 S2) = sum_i sqrt(l_i), l_i the eigenvalues of
sqrt(S1) S2 sqrt(S1) (similar to S1 S2, but symmetric PSD), with two float64 ``eigh`` calls.
No scipy ``sqrtm``: its ``disp`` argument is gone in SciPy 1.18, and it is 50x slower.

Statistics are stored as EDM's npz (``mu`` float64 (D,), ``sigma`` float64 (D, D)), plus the
optional metadata arrays ``feature``, ``n``, ``resolution``, ``channels`` that EDM ignores.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffobj.errors import UserError
from diffobj.io import atomic_path

META_KEYS = ("feature", "n", "resolution", "channels")


@dataclass
class Statistics:
    """Mean and covariance of features (float64), and where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        extra = {k: np.asarray(v) for k, v in self.meta.items() if k in META_KEYS and v is not None}
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, mu=self.mu.astype(np.float64), sigma=self.sigma.astype(np.float64), **extra)

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"{path}: reference statistics not found (make them with `diffobj fid-ref`)"
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = {"mu", "sigma"} - set(archive.files)
                if missing:
                    raise UserError(
                        f"{path}: missing key {sorted(missing)[0]!r}; expected an npz with mu and sigma"
                    )
                mu, sigma = archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64)
                meta = {k: archive[k].item() for k in META_KEYS if k in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path}: not a readable npz ({err})") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise UserError(
                f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (D,) and (D, D)"
            )
        return cls(mu, sigma, meta)


class FeatureMoments:
    """Running float64 sums of features and their outer products (EDM's accumulation)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.n = 0
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        f = features.to(device=self.total.device, dtype=torch.float64).reshape(
            features.shape[0], -1
        )
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def statistics(self, meta: dict[str, Any] | None = None) -> Statistics:
        if self.n < 2:
            raise UserError(f"need at least 2 images for a covariance, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return Statistics(mu.cpu().numpy(), sigma.cpu().numpy(), {**(meta or {}), "n": self.n})


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2, via eigenvalues of sqrt(S1) S2 sqrt(S1)."""
    s1 = s1.to(torch.float64)
    s2 = s2.to(torch.float64)
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    m = root @ s2 @ root
    eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)
    return eigenvalues.clamp_min(0).sqrt().sum()


def frechet_distance(a: Statistics, b: Statistics, device: torch.device | str = "cpu") -> float:
    """The Fréchet distance between N(a.mu, a.sigma) and N(b.mu, b.sigma), in float64."""
    if a.mu.shape != b.mu.shape:
        raise UserError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    mu1, mu2 = (torch.as_tensor(s.mu, dtype=torch.float64, device=device) for s in (a, b))
    s1, s2 = (torch.as_tensor(s.sigma, dtype=torch.float64, device=device) for s in (a, b))
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    return float(value)
