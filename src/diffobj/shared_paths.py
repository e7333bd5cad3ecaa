"""Work that experiments share, keyed by its inputs, not by the experiment's name.

Prepared data, optimal-loss tables, the convergence study, classifier features with their FD
references and Inception references depend on a few fields of the spec, not on the experiment:
they live under ``results/shared/``, one folder per key, named ``<readable label>-<digest>``
(the first ``DIGEST_CHARS`` hex digits of the SHA-256 of the key's canonical JSON), with the key
itself beside the outputs as ``key.json``. A copied spec under another ``experiment:`` name asks
for the same folders, so the workflow plans none of that work again; a change of a key field
names another folder.

Every path of shared work is made here, from the loaded spec (``diffobj.spec.load``): the
workflow rules (through common.smk), gather and the figures call these functions. ``root`` is
the folder holding the experiments' folders (``results``, relative to Snakemake's working
directory); given an experiment's folder, its parent. Nothing here knows of Snakemake.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffobj.spec import LoadedSpec

SHARED = "shared"  # the folder beside the experiments' folders; no experiment may take the name
ROOT = "results"
DIGEST_CHARS = 10
KEY_FILE = "key.json"
SEED = 0  # of the shared jobs' draws (optimal-loss queries, classifier training)
CONVERGENCE_LEVELS = 8  # noise levels of the estimator study
# the sources whose split prepare-data makes (the others ship one): test_fraction matters
SPLIT_SOURCES = ("sklearn_digits", "image_folder")


@dataclass(frozen=True)
class Work:
    """One kind of shared work: its folder under ``results/shared/`` and the files each of its
    key folders holds (besides ``key.json``)."""

    folder: str
    files: tuple[str, ...]


IMAGES, TEST_IMAGES = "images.npy", "test/images.npy"  # uint8 NHWC, training and held out
CLASSIFIER, FD_REFERENCE, TEST_FD = "features.pt", "ref.npz", "test-fd.json"
DATA = Work("data", (IMAGES, "labels.npy", "meta.json", TEST_IMAGES))
OPTIMAL = Work("optimal", ("optimal_loss.csv",))
CONVERGENCE = Work("convergence", ("convergence.csv",))
FEATURES = Work("features", (CLASSIFIER, FD_REFERENCE, TEST_FD))
INCEPTION = Work("inception", (FD_REFERENCE,))
WORKS = (DATA, OPTIMAL, CONVERGENCE, FEATURES, INCEPTION)


def key_text(key: dict[str, Any]) -> str:
    """The canonical JSON of a key (sorted keys, one line): what the digest hashes and what
    ``key.json`` holds."""
    return json.dumps(key, sort_keys=True, separators=(", ", ": "))


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(key_text(key).encode()).hexdigest()[:DIGEST_CHARS]


def root_of(results: str | Path) -> Path:
    """The root of an experiment's folder (``results/<experiment>``, as the commands' --results
    names it): the folder the shared work sits in too."""
    return Path(results).parent


def shared_dir(root: str | Path = ROOT) -> Path:
    return Path(root) / SHARED


def path(work: Work, name: str, file: str, root: str | Path = ROOT) -> Path:
    """``file`` of the key folder ``name`` of ``work``; ``name`` may be a wildcard pattern."""
    return shared_dir(root) / work.folder / name / file


def log_file(rule: str, name: str, root: str | Path = ROOT) -> Path:
    return shared_dir(root) / "logs" / rule / f"{name}.log"


def data_key(loaded: LoadedSpec, dataset: str) -> dict[str, Any]:
    """What prepare-data is given for ``dataset``: its declaration, the path resolved from the
    spec's base (a spec elsewhere naming the same file shares the folder)."""
    declared = loaded.spec.datasets[dataset]
    return {
        "name": dataset,  # recorded in meta.json
        "source": declared.source,
        "path": str(loaded.resolve(declared.path)) if declared.path else None,
        "pad": declared.pad,
        "resolution": declared.resolution,
        "test_fraction": declared.test_fraction if declared.source in SPLIT_SOURCES else None,
    }


def data_name(loaded: LoadedSpec, dataset: str) -> str:
    return f"{dataset}-{digest(data_key(loaded, dataset))}"


def data_file(loaded: LoadedSpec, dataset: str, file: str, root: str | Path = ROOT) -> Path:
    """A file of ``dataset``'s prepared folder: one of ``DATA.files``, or "" for the folder."""
    return path(DATA, data_name(loaded, dataset), file, root)


def optimal_schedule(loaded: LoadedSpec, process: str) -> str:
    """The first schedule of the grid for this process; the optimal loss depends on lam only,
    the schedule maps it to the table's t."""
    return next(r.schedule for r in loaded.runs if r.process == process)


def _estimator_key(loaded: LoadedSpec, dataset: str, process: str) -> dict[str, Any]:
    """What both optimal-loss jobs of a (dataset, process) pair are given."""
    declared = loaded.spec.processes[process]
    return {
        "data": data_name(loaded, dataset),
        "kind": declared.kind,
        "schedule": optimal_schedule(loaded, process),
        "log_snr_range": list(declared.log_snr_range),
        "queries": loaded.spec.optimal_loss.queries,
        "device": "cuda" if loaded.spec.resources.optimal_loss.gpus > 0 else "cpu",
        "seed": SEED,
    }


def optimal_key(loaded: LoadedSpec, dataset: str, process: str) -> dict[str, Any]:
    spec = loaded.spec.optimal_loss
    return {
        **_estimator_key(loaded, dataset, process),
        "levels": spec.levels,
        "estimator": spec.estimator,
        "subset": spec.subset,
    }


def convergence_key(loaded: LoadedSpec, dataset: str, process: str) -> dict[str, Any]:
    return {**_estimator_key(loaded, dataset, process), "levels": CONVERGENCE_LEVELS}


def _pair_name(loaded: LoadedSpec, dataset: str, process: str, key: dict[str, Any]) -> str:
    return f"{dataset}-{loaded.spec.processes[process].kind}-{digest(key)}"


def optimal_name(loaded: LoadedSpec, dataset: str, process: str) -> str:
    return _pair_name(loaded, dataset, process, optimal_key(loaded, dataset, process))


def convergence_name(loaded: LoadedSpec, dataset: str, process: str) -> str:
    return _pair_name(loaded, dataset, process, convergence_key(loaded, dataset, process))


def optimal_table(loaded: LoadedSpec, dataset: str, process: str, root: str | Path = ROOT) -> Path:
    """The optimal loss per log-SNR of a (dataset, process) pair."""
    return path(OPTIMAL, optimal_name(loaded, dataset, process), OPTIMAL.files[0], root)


def convergence_table(
    loaded: LoadedSpec, dataset: str, process: str, root: str | Path = ROOT
) -> Path:
    """SNIS / DOL / cDOL against exact, of a (dataset, process) pair."""
    name = convergence_name(loaded, dataset, process)
    return path(CONVERGENCE, name, CONVERGENCE.files[0], root)


def features_key(loaded: LoadedSpec, dataset: str) -> dict[str, Any]:
    """What train-features is given; the FD references (fid-ref, and the held-out FD) made with
    its features belong to the same folder."""
    epochs = loaded.spec.evaluation.features_epochs
    return {"data": data_name(loaded, dataset), "epochs": epochs, "seed": SEED}


def features_name(loaded: LoadedSpec, dataset: str) -> str:
    return f"{dataset}-{digest(features_key(loaded, dataset))}"


def features_file(loaded: LoadedSpec, dataset: str, file: str, root: str | Path = ROOT) -> Path:
    """One of ``FEATURES.files`` of ``dataset``: the classifier (CLASSIFIER), the reference
    statistics of its training images (FD_REFERENCE), the FD of its held-out images (TEST_FD)."""
    return path(FEATURES, features_name(loaded, dataset), file, root)


def inception_key(loaded: LoadedSpec, dataset: str) -> dict[str, Any]:
    weights = loaded.spec.evaluation.inception_weights
    return {
        "data": data_name(loaded, dataset),
        "weights": str(loaded.resolve(weights)) if weights else None,  # None: the installed
    }


def inception_name(loaded: LoadedSpec, dataset: str) -> str:
    return f"{dataset}-{digest(inception_key(loaded, dataset))}"


def inception_reference(loaded: LoadedSpec, dataset: str, root: str | Path = ROOT) -> Path:
    return path(INCEPTION, inception_name(loaded, dataset), INCEPTION.files[0], root)


# the folders of each kind of work: per dataset, or per (dataset, process) pair of the grid
PER_DATASET = {
    DATA: (data_name, data_key),
    FEATURES: (features_name, features_key),
    INCEPTION: (inception_name, inception_key),
}
PER_PAIR = {OPTIMAL: (optimal_name, optimal_key), CONVERGENCE: (convergence_name, convergence_key)}


def keys(loaded: LoadedSpec, work: Work) -> dict[str, dict[str, Any]]:
    """Folder name -> key of every folder of ``work`` the spec's grid asks for (pairs with the
    same key share one folder)."""
    if work in PER_PAIR:
        name, key = PER_PAIR[work]
        pairs = sorted({(r.dataset, r.process) for r in loaded.runs})
        return {name(loaded, d, p): key(loaded, d, p) for d, p in pairs}
    name, key = PER_DATASET[work]
    return {name(loaded, d): key(loaded, d) for d in sorted({r.dataset for r in loaded.runs})}
