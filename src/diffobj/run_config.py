"""A run's fully resolved configuration (RUN_DIR/config.yaml): everything one training needs.

Written by the workflow from the spec (``diffobj.spec.Run.resolved``), read by compute jobs
(train, sample, nll). Self-contained: the schedule and weighting are stored as their
expressions, so a GPU node needs only torch, numpy, pyyaml and the library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffobj.errors import UserError
from diffobj.io import read_yaml
from diffobj.objectives import schedules, weightings
from diffobj.objectives.schedules import Schedule
from diffobj.objectives.weightings import Weighting


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    raw: dict[str, Any]  # the YAML as written

    @property
    def process(self) -> dict[str, Any]:
        """name, kind (gaussian|masked), log_snr_range, and for Gaussian prediction, sigma_data."""
        return self.raw["process"]

    @property
    def kind(self) -> str:
        return self.process["kind"]

    @property
    def schedule(self) -> Schedule:
        entry = dict(self.raw["schedule"])
        name = entry.pop("name")
        return schedules.build(
            name, entry, tuple(self.process["log_snr_range"]), source=f"run {self.run_id}"
        )

    @property
    def weighting(self) -> Weighting:
        entry = dict(self.raw["weighting"])
        return weightings.build(entry.pop("name"), entry, source=f"run {self.run_id}")

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]

    @property
    def training(self) -> dict[str, Any]:
        return self.raw["training"]

    @property
    def data_path(self) -> Path:
        return Path(self.raw["data"]["images"])

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])


REQUIRED = ("run_id", "process", "schedule", "weighting", "model", "training", "data", "seed")


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    raw = read_yaml(path, "run config")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise UserError(f"{path}: missing key {missing[0]!r}")
    config = RunConfig(str(raw["run_id"]), raw)
    config.schedule  # noqa: B018 - build once so a bad expression fails here, naming the file
    config.weighting  # noqa: B018
    return config


def dump_run_config(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
