"""Where a number came from: code version, libraries, machine, threads, spec and seeds.

Compute jobs record ``runtime()`` (device, threads, library versions) in their outputs; the
tables job adds ``environment()`` (code, spec) and writes both into every parquet file's
metadata and into the report. Nothing here is a timestamp, so running the DAG twice on the same
machine gives the same provenance (and byte-identical tables apart from timing columns).

What varies across machines, and why, is in docs/reproducibility.md.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

PARQUET_KEY = "diffobj.provenance"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@cache
def cpu_model() -> str:
    """The processor's name (differs between machines; float reductions may differ with it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime(device: Any = "cpu") -> dict[str, Any]:
    """What a compute job ran on: device, torch threads and the numeric libraries' versions."""
    import numpy as np
    import torch

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": f"{device.type}: {name}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def git_state(root: str | Path = ".") -> dict[str, Any]:
    """The commit of the checkout and whether it has uncommitted changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if commit else None}


def spec_digest(loaded: Any) -> str:
    """sha256 of the validated spec with its library entries merged: what the runs were made
    from, whatever the files' layout, comments or key order."""
    content = {
        "spec": loaded.spec.model_dump(mode="json"),
        "schedules": loaded.schedule_entries,
        "weightings": loaded.weighting_entries,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def environment(loaded: Any) -> dict[str, Any]:
    """The code, libraries and spec behind an experiment's tables."""
    return {
        "diffobj": _version("diffobj"),
        **git_state(Path(__file__).parent),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "polars": _version("polars"),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model(),
        "spec": str(loaded.path),
        "spec_sha256": spec_digest(loaded),
        "seeds": sorted({run.seed for run in loaded.runs}),
    }


def job_summary(records: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, list[str]]:
    """Per stage, the distinct (device, threads, torch) the jobs ran with, e.g.
    {"train": ["cpu: Xeon, 1 thread(s), torch 2.13.0"]}: one entry each when all jobs agree."""
    summary = {}
    for stage, items in records.items():
        seen = {f"{r['device']}, {r['threads']} thread(s), torch {r['torch']}" for r in items if r}
        summary[stage] = sorted(seen)
    return summary


def as_text(provenance: Mapping[str, Any]) -> str:
    return json.dumps(provenance, sort_keys=True)
