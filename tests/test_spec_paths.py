"""A spec's relative paths (libraries, dataset files) start at the spec's project or its own
directory, never at the shell's working directory; `diffobj validate` says which files it used
and refuses a dataset file that is not there."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffobj import shared_paths, spec
from diffobj.cli import main

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "experiment": "paths",
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "processes": {"gaussian": {"kind": "gaussian", "log_snr_range": [-10, 10]}},
    "models": {"tiny": {"preset": "mlp", "channels": 16, "num_blocks": 1}},
    "grid": [
        {
            "dataset": "digits",
            "process": "gaussian",
            "schedule": "vp_cosine",
            "weighting": "only_here",
            "model": "tiny",
        }
    ],
}


def project(where: Path, weighting: str) -> Path:
    """A diffobj project at ``where``: the repository's libraries plus one extra weighting."""
    (where / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "schedules.yaml", where / "config" / "schedules.yaml")
    library = (ROOT / "config" / "weightings.yaml").read_text()
    (where / "config" / "weightings.yaml").write_text(library + f'\n{weighting}: "exp(-lam / 2)"\n')
    return where


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The shell's directory: a second project whose library lacks the spec's weighting."""
    decoy = project(tmp_path / "shell", "not_this_one")
    monkeypatch.chdir(decoy)
    return decoy


def test_libraries_and_data_come_from_the_specs_project_not_the_shells(tmp_path, elsewhere, capsys):
    home = project(tmp_path / "proj", "only_here")
    data = {**SPEC, "datasets": {"c": {"source": "cifar10", "path": "downloads/cifar.tar.gz"}}}
    data["grid"] = [{**SPEC["grid"][0], "dataset": "c"}]
    path = write(home / "experiments" / "deep" / "spec.yaml", data)
    found = home / "downloads" / "cifar.tar.gz"
    found.parent.mkdir()
    found.write_bytes(b"stand-in: validate reads no data")
    loaded = spec.load(path)
    assert loaded.base == home
    assert loaded.libraries == {
        "schedules": home / "config" / "schedules.yaml",
        "weightings": home / "config" / "weightings.yaml",
    }
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"  paths relative to {home}\n" in out
    assert f"  weightings library: {home / 'config' / 'weightings.yaml'}\n" in out
    assert f"  datasets.c.path: {found}\n" in out


def test_the_same_spec_fails_where_its_library_lacks_the_weighting(tmp_path, elsewhere):
    # the decoy in the shell's directory has every weighting but only_here: a lookup from the
    # working directory would fail here the same way, so this is the control of the test above
    path = write(elsewhere / "spec.yaml", SPEC)
    with pytest.raises(spec.SpecError, match="unknown weighting 'only_here'"):
        spec.load(path)


def test_outside_a_project_unset_libraries_are_the_workflows_and_set_ones_the_specs(
    tmp_path, elsewhere
):
    data = {**SPEC, "grid": [{**SPEC["grid"][0], "weighting": "fm"}]}
    loaded = spec.load(write(tmp_path / "loose" / "spec.yaml", data))
    assert loaded.base == tmp_path / "loose"
    assert loaded.libraries["weightings"] == ROOT / "config" / "weightings.yaml"
    own = {**SPEC, "weightings_library": "mine.yaml"}
    (tmp_path / "loose" / "mine.yaml").write_text('only_here: "1"\n')
    loaded = spec.load(write(tmp_path / "loose" / "own.yaml", own))
    assert loaded.libraries["weightings"] == tmp_path / "loose" / "mine.yaml"
    assert list(loaded.weighting_entries) == ["only_here"]


def cifar_spec(tmp_path: Path) -> Path:
    data = {**SPEC, "datasets": {"c": {"source": "cifar10", "path": "downloads/cifar.tar.gz"}}}
    data["grid"] = [{**SPEC["grid"][0], "dataset": "c", "weighting": "fm"}]
    return write(tmp_path / "loose" / "spec.yaml", data)


def test_validate_refuses_a_missing_dataset_saying_what_to_get_and_where(
    tmp_path, elsewhere, capsys
):
    path = cifar_spec(tmp_path)
    # a file at the same relative path under the shell's directory does not count
    (elsewhere / "downloads").mkdir()
    (elsewhere / "downloads" / "cifar.tar.gz").write_bytes(b"stand-in")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    expected = tmp_path / "loose" / "downloads" / "cifar.tar.gz"
    assert err.count("\n") == 1 and f"{path}: datasets.c.path: 'downloads/cifar.tar.gz'" in err
    assert "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/" in err
    assert f"put it at {expected} (relative paths in a spec start at {tmp_path / 'loose'})" in err


def test_the_workflow_run_from_elsewhere_reads_the_dataset_where_the_spec_means(tmp_path):
    path = cifar_spec(tmp_path)
    found = tmp_path / "loose" / "downloads" / "cifar.tar.gz"
    found.parent.mkdir()
    found.write_bytes(b"stand-in: the dry run reads no data")
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p"]
        + [str(shared_paths.data_file(spec.load(path), "c", shared_paths.IMAGES))]
        + ["--configfile", os.path.relpath(path, workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    (command,) = re.findall(r"diffobj prepare-data .*", output)
    assert f"--path {found} " in command
