"""Shared work (diffobj.shared_paths): folders named by the SHA-256 of their key, the same for
any experiment name, another for any change of a key field."""

import copy
import hashlib
from pathlib import Path

import pytest
import yaml
from test_workflow import TINY

from diffobj import shared_paths, spec
from diffobj.shared_paths import CONVERGENCE, FEATURES, INCEPTION, OPTIMAL, WORKS


def load(tmp_path: Path, data: dict, name: str = "spec.yaml") -> spec.LoadedSpec:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return spec.load(path)


def edited(**changes) -> dict:
    """TINY with ``section={key: value}`` changes (``experiment="x"`` for a top-level one)."""
    data = copy.deepcopy(TINY)
    for section, value in changes.items():
        if isinstance(value, dict):
            data[section] = {**data.get(section, {}), **value}
        else:
            data[section] = value
    return data


def folders(loaded: spec.LoadedSpec) -> dict[str, set[str]]:
    return {work.folder: set(shared_paths.keys(loaded, work)) for work in WORKS}


def test_a_data_folder_is_named_by_the_sha256_of_its_key_json(tmp_path):
    loaded = load(tmp_path, TINY)
    key = (
        '{"name": "digits", "pad": 0, "path": null, "resolution": null, '
        '"source": "sklearn_digits", "test_fraction": 0.2}'
    )
    name = "digits-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    assert shared_paths.key_text(shared_paths.data_key(loaded, "digits")) == key
    images = Path("results/shared/data") / name / "images.npy"
    assert shared_paths.data_file(loaded, "digits", "images.npy") == images
    # the run configs train on the shared folder's images
    assert {r.resolved()["data"]["images"] for r in loaded.runs} == {str(images)}


def test_an_optimal_loss_key_names_its_data_folder_and_the_estimators_options(tmp_path):
    loaded = load(tmp_path, TINY)
    data = shared_paths.data_name(loaded, "digits")
    key = shared_paths.optimal_key(loaded, "digits", "masked")
    assert key == {
        "data": data,
        "kind": "masked",
        "schedule": "md4_cosine",
        "log_snr_range": [-9.21, 9.21],
        "levels": 6,
        "queries": 128,
        "estimator": "exact",
        "subset": None,
        "device": "cpu",
        "seed": 0,
    }
    name = "digits-masked-" + hashlib.sha256(shared_paths.key_text(key).encode()).hexdigest()[:10]
    table = Path("results/shared/optimal") / name / "optimal_loss.csv"
    assert shared_paths.optimal_table(loaded, "digits", "masked") == table


def test_another_experiment_name_asks_for_the_same_shared_folders(tmp_path):
    first = load(tmp_path, TINY)
    copied = load(tmp_path, edited(experiment="tiny_copy"), "copy.yaml")
    for work in WORKS:
        assert shared_paths.keys(first, work) == shared_paths.keys(copied, work), work.folder
    assert {len(names) for names in folders(first).values()} == {1, 2}  # optimal: two kinds


@pytest.mark.parametrize(
    "changes, moved",
    [
        # the data key: everything made from the data moves with it
        ({"datasets": {"digits": {"source": "sklearn_digits", "pad": 2}}}, {*WORKS}),
        ({"optimal_loss": {"levels": 5, "queries": 128}}, {OPTIMAL}),
        ({"optimal_loss": {"levels": 6, "queries": 64}}, {OPTIMAL, CONVERGENCE}),
        ({"evaluation": {"features_epochs": 2}}, {FEATURES}),
        ({"evaluation": {"features_epochs": 1, "inception_weights": "w.pt"}}, {INCEPTION}),
    ],
)
def test_a_changed_key_field_names_other_folders_and_only_there(tmp_path, changes, moved):
    (tmp_path / "w.pt").write_bytes(b"stand-in")
    before = folders(load(tmp_path, TINY))
    after = folders(load(tmp_path, edited(**changes), "changed.yaml"))
    for work in WORKS:
        assert before[work.folder].isdisjoint(after[work.folder]) == (work in moved), work.folder
        assert (before[work.folder] == after[work.folder]) == (work not in moved), work.folder


def test_an_experiment_named_like_the_shared_folder_is_refused(tmp_path):
    with pytest.raises(spec.SpecError, match="'shared' is the folder of the work experiments"):
        load(tmp_path, edited(experiment="shared"))
