"""A rehearsal of a spec: its whole DAG at toy size on a CPU, before it waits in a GPU queue.

``rehearsal_spec`` derives the rehearsal from the spec itself (nothing kept by hand): the same
datasets' sources and shapes, processes, schedules, weightings, densities, presets and their
levels and attention, conditioning and guidance, samplers, evaluations and figures; only the
sizes shrink (``TRAINING``, ``MODEL``, ``OPTIMAL_LOSS``, ``SAMPLING``, ``EVALUATION`` below).
Datasets that are downloads are replaced by random stand-ins written in the released formats
(``diffobj.data.fake``), read by the same loaders. The FID path runs with the installed
Inception weights, or, where they are not installed, with random weights that every output
names as such (``inception.RANDOM_FEATURE_NAME``). Every number a rehearsal writes is
meaningless: it shows that each job runs and each output is written, nothing more.

``prepare`` writes the rehearsal's folder (spec, stand-in data, weights); ``snakemake_command``
is the command that runs it; ``diffobj rehearse`` does both.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diffobj import spec as spec_mod
from diffobj.data import fake
from diffobj.errors import UserError
from diffobj.io import atomic_path

SUFFIX = "_rehearsal"  # of the experiment name: a rehearsal's results never pass for real ones
SPEC_NAME = "spec.yaml"
DATA_DIR = "data"
RANDOM_INCEPTION = "inception-RANDOM-rehearsal-not-for-fid.pt"
# stand-in images per dataset: two batches, a held-out split, twice the cDOL subset;
# few, as every training ends by evaluating its model on each of them at every log-SNR bin
STAND_IN_TRAIN = 16
STAND_IN_TEST = 8
SEED = 0

# sizes a rehearsal sets (training: in `training` and in any grid entry's overrides of them);
# checkpoint_every < steps so a checkpoint is written and the run goes on after it
TRAINING = {
    "steps": 4,
    "batch_size": 8,
    "checkpoint_every": 2,
    "log_every": 1,
    "ema_halflife_images": 16,
}
MAX_BINS = 8  # log_snr_bins at most this: the end-of-training evaluation runs once per bin
MAX_WARMUP = 2  # kept when smaller (0 stays 0), so a warmup still ramps within the 4 steps
MODEL = {"channels": 8, "num_blocks": 1}  # the levels (channel_mult) and attention are kept
MLP_CHANNELS = 16
OPTIMAL_LOSS = {"levels": 8, "queries": 64, "subset": 8}  # each at most this
SAMPLING = {"num": 8, "gaussian_steps": 4, "masked_steps": 8}  # each at most this
EVALUATION = {  # each at most this
    "features_epochs": 1,
    "nll_samples_per_image": 1,
    "bootstrap": 10,
    "bounds_cuts": 4,
    "bounds_images": 16,
    "bounds_queries": 32,
}


@dataclass
class Rehearsal:
    """A prepared rehearsal: its folder (Snakemake's working directory) and what it holds."""

    source: Path  # the spec rehearsed
    workdir: Path
    spec_path: Path  # the rehearsal's spec, in workdir
    original: spec_mod.LoadedSpec  # the spec rehearsed, validated
    loaded: spec_mod.LoadedSpec  # the rehearsal's spec, validated
    inception: str | None  # "installed" / "random" when the spec computes FID, else None
    gpu_switches: bool
    stand_ins: dict[str, str] = field(default_factory=dict)  # dataset -> path in workdir

    @property
    def experiment(self) -> str:
        return self.loaded.experiment

    @property
    def runs(self) -> list[str]:
        return [r.id for r in self.loaded.runs]

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.loaded.spec.evaluation.model_dump()

    @property
    def results(self) -> Path:
        return self.workdir / "results" / self.experiment


def prepare(
    spec_path: str | Path,
    workdir: str | Path,
    *,
    inception: str = "auto",
    gpu_switches: bool = False,
) -> Rehearsal:
    """Write the rehearsal of ``spec_path`` into ``workdir``: ``spec.yaml``, the stand-in data
    and (``inception`` "random", or "auto" without the installed weights) random Inception
    weights. ``gpu_switches``: every run in bf16 with torch.compile (and channels_last, which
    the caller's environment turns on, ``devices.GPU_SWITCHES_ON_CPU``)."""
    from diffobj.metrics import inception as inception_mod

    if inception not in ("auto", "installed", "random"):
        raise UserError(f"--inception must be auto, installed or random, got {inception!r}")
    loaded = spec_mod.load(spec_path)
    raw = spec_mod._read_yaml(Path(spec_path))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stand_ins = write_stand_ins(loaded, workdir)
    weights, kind = None, None
    if loaded.spec.evaluation.fid:
        installed = inception_mod.locate_wheel_weights()
        if inception == "installed" and installed is None:
            raise UserError(inception_mod.INSTALL_HINT)
        if inception == "random" or installed is None:
            inception_mod.write_random_weights(workdir / RANDOM_INCEPTION, seed=SEED)
            weights, kind = str((workdir / RANDOM_INCEPTION).resolve()), "random"
        else:
            kind = "installed"
    derived = rehearsal_spec(
        raw, loaded, stand_ins=stand_ins, inception_weights=weights, gpu_switches=gpu_switches
    )
    path = workdir / SPEC_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(
            f"# A REHEARSAL of {Path(spec_path)} (diffobj rehearse): toy sizes, random\n"
            "# stand-in data; no number it produces means anything.\n"
            + yaml.safe_dump(derived, sort_keys=False)
        )
    rehearsed = spec_mod.load(path)  # it must validate as any spec does
    return Rehearsal(
        Path(spec_path), workdir, path, loaded, rehearsed, kind, gpu_switches, stand_ins
    )


def write_stand_ins(loaded: spec_mod.LoadedSpec, workdir: Path) -> dict[str, str]:
    """A stand-in of each dataset the grid uses that is read from a file (sklearn's digits
    ship with sklearn and are used as they are); returns dataset -> absolute path (the
    rehearsal's spec lies in workdir, which may be inside a project whose paths it must not take)."""
    used = {r.dataset for r in loaded.runs}
    paths = {}
    for i, (name, dataset) in enumerate(sorted(loaded.spec.datasets.items())):
        if name not in used or dataset.source not in fake.FAKE_NAMES:
            continue
        folder = workdir / DATA_DIR / name
        rng = np.random.default_rng([SEED, i])
        side = dataset.resolution or fake.CIFAR10_SIDE
        path = fake.write_stand_in(
            dataset.source, folder, rng, STAND_IN_TRAIN, STAND_IN_TEST, side=side
        )
        paths[name] = str(path.resolve())
    return paths


def rehearsal_spec(
    raw: dict[str, Any],
    loaded: spec_mod.LoadedSpec,
    *,
    stand_ins: dict[str, str],
    inception_weights: str | None = None,
    gpu_switches: bool = False,
) -> dict[str, Any]:
    """The rehearsal of the spec ``raw`` (as read from its YAML; ``loaded``, it validated):
    a copy with the sizes shrunk, the stand-ins' paths, the libraries' absolute paths (the
    rehearsal runs in another folder) and the CPU's resources. See the module docstring."""
    out = copy.deepcopy(raw)
    out["experiment"] = loaded.experiment + SUFFIX
    out["description"] = f"REHEARSAL (toy sizes, stand-in data) of: {raw.get('description', '')}"
    for what, library in loaded.libraries.items():
        out[f"{what}_library"] = str(library.resolve())
    for name, path in stand_ins.items():
        out["datasets"][name]["path"] = path
    out["models"] = shrink_models(raw["models"])
    out["training"] = shrink_training(loaded.spec.training.model_dump(), raw.get("training", {}))
    if gpu_switches:
        out["training"].update(precision="bf16", compile=True)
    for entry in out["grid"]:
        if entry.get("training"):
            entry["training"] = shrink_overrides(entry["training"], gpu_switches)
    validated = loaded.spec
    out["optimal_loss"] = at_most(raw.get("optimal_loss", {}), OPTIMAL_LOSS, validated.optimal_loss)
    out["sampling"] = at_most(raw.get("sampling", {}), SAMPLING, validated.sampling)
    evaluation = at_most(raw.get("evaluation", {}), EVALUATION, validated.evaluation)
    if inception_weights is not None:
        evaluation["inception_weights"] = inception_weights
    else:
        evaluation.pop("inception_weights", None)  # a cluster's path: the installed weights
    out["evaluation"] = evaluation
    out.pop("resources", None)  # the CPU-sized defaults: no GPU, the rule's own device
    return out


def shrink_models(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Narrow and shallow, with each preset, its levels, attention, conditioning and dropout
    kept. Widths and depths are divided by one factor per kind of network (the MLP's, the
    U-Nets'), so the smallest becomes ``MODEL``'s and models that differ still differ in the
    same order (a scaling study needs its sizes)."""
    mlp = {n for n, m in models.items() if m.get("preset") == "mlp"}
    out = {}
    for group, smallest in ((mlp, MLP_CHANNELS), (set(models) - mlp, MODEL["channels"])):
        if not group:
            continue
        widths = {n: int(models[n].get("channels", 64)) for n in group}
        depths = {n: int(models[n].get("num_blocks", 2)) for n in group}
        low_width, low_depth = min(widths.values()), min(depths.values())
        for name in group:
            model = dict(models[name])
            channels = round(smallest * widths[name] / low_width)
            model["channels"] = channels
            model["num_blocks"] = round(MODEL["num_blocks"] * depths[name] / low_depth)
            if model.get("embed_dim"):  # the same multiple of the channels (EDM's)
                model["embed_dim"] = channels * max(1, round(model["embed_dim"] / widths[name]))
            out[name] = model
    return {name: out[name] for name in models}


def shrink_training(validated: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The spec's ``training`` (as written) with the rehearsal's sizes; torch.compile off."""
    out = {**raw, **TRAINING, "compile": False}
    out["warmup_steps"] = min(int(validated["warmup_steps"]), MAX_WARMUP)
    out["log_snr_bins"] = min(int(validated["log_snr_bins"]), MAX_BINS)
    return out


def shrink_overrides(overrides: dict[str, Any], gpu_switches: bool) -> dict[str, Any]:
    """A grid entry's ``training`` overrides: the sizes it sets become the rehearsal's."""
    out = {k: TRAINING.get(k, v) for k, v in overrides.items()}
    for key, limit in (("warmup_steps", MAX_WARMUP), ("log_snr_bins", MAX_BINS)):
        if key in out:
            out[key] = min(int(out[key]), limit)
    if "compile" in out:
        out["compile"] = gpu_switches
    if gpu_switches and "precision" in out:
        out["precision"] = "bf16"
    return out


def at_most(section: dict[str, Any], limits: dict[str, int], validated: Any) -> dict[str, Any]:
    """A section as written with each limited key at most its limit, compared with the
    ``validated`` value (the default where the spec leaves it; None, e.g. no subset, stays out)."""
    values = validated.model_dump()
    out = dict(section)
    for key, limit in limits.items():
        value = values.get(key)
        if value is not None:
            out[key] = min(int(value), limit)
    return out


def snakemake_command(
    rehearsal: Rehearsal, cores: int, snakefile: Path, targets: list[str] | None = None
) -> list[str]:
    """The Snakemake call that runs the rehearsal (its folder is the working directory)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "--directory",
        str(rehearsal.workdir),
        "--config",
        f"spec={SPEC_NAME}",
        "--cores",
        str(cores),
        *(targets or []),
    ]


def run_targets(rehearsal: Rehearsal, run_ids: list[str]) -> list[str]:
    """The files of the named runs only (training, samples, each evaluation the spec asks
    for), relative to the working directory: a rehearsal of a few runs, not the whole DAG."""
    unknown = sorted(set(run_ids) - set(rehearsal.runs))
    if unknown:
        raise UserError(
            f"{rehearsal.source}: --run {unknown[0]!r} is not a run of the grid "
            f"(runs: {', '.join(rehearsal.runs)})"
        )
    evaluation = rehearsal.evaluation
    names = ["model.pt", "samples.npz"]
    names += ["fid.json"] if evaluation["fid"] else []
    names += ["nll.json"] if evaluation["nll"] else []
    names += ["fd_classifier.json"] if evaluation["fd_classifier"] else []
    names += ["bounds.csv"] if evaluation["bounds"] else []
    base = f"results/{rehearsal.experiment}/runs"
    return [f"{base}/{run}/{name}" for run in run_ids for name in names]


def snakefile_for(loaded_root: Path) -> Path:
    """The workflow's Snakefile: in the checkout the spec's libraries came from."""
    for root in (loaded_root, spec_mod.REPO_ROOT):
        if (root / "Snakefile").is_file():
            return root / "Snakefile"
    raise UserError(
        f"no Snakefile in {loaded_root} or {spec_mod.REPO_ROOT}: run `diffobj rehearse` in "
        "the diffobj checkout, or give --snakefile PATH"
    )
