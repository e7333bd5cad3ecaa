"""docs/contributing.md stays true: its sampler example registers and samples a trained run,
and a misspelt figure, sampler or estimator is refused by validate with the known names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffobj import spec
from diffobj.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "contributing.md"

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def doc_example(section: str, language: str = "python") -> str:
    """The first ``language`` block of a section of docs/contributing.md."""
    text = DOC.read_text()
    body = text[text.index(f"## {section}") :]
    return re.search(rf"```{language}\n(.*?)```", body, re.S).group(1)


@pytest.fixture
def euler():
    """The doc's sampler, registered for the test only."""
    from diffobj.sampling.samplers import SAMPLERS

    namespace: dict = {}
    exec(compile(doc_example("Adding a sampler"), str(DOC), "exec"), namespace)
    yield SAMPLERS["euler"]
    SAMPLERS.remove("euler")


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory) -> Path:
    """A two-step training of the embedded default's tiny model on 16 random images."""
    from diffobj.training.train import TrainOptions, train

    tmp = tmp_path_factory.mktemp("run")
    images = tmp / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    loaded = spec.load(ROOT / "config" / "config.yaml", root=ROOT)
    raw = loaded.run("digits-gaussian-vp_cosine-elbo-mlp-s0").resolved()
    raw["data"]["images"] = str(images)
    raw["model"]["channels"] = 8
    raw["training"].update(steps=2, batch_size=4, log_every=1)
    cfg = tmp / "gaussian.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    train(cfg, tmp / "gaussian", TrainOptions(device="cpu", progress=False, eval_images=4))
    return tmp / "gaussian"


def test_the_documented_sampler_samples_a_trained_run(euler, gaussian_run, tmp_path):
    from diffobj.cli import main
    from diffobj.commands.sample import sampler_help
    from diffobj.sampling.config import requested
    from diffobj.sampling.samplers import check_sampler, sample_run

    assert euler.kind == "gaussian" and "euler" in sampler_help()
    check_sampler("gaussian", "euler", 3, 5, 2, None)
    with pytest.raises(UserError, match="not a sampler of the masked process"):
        check_sampler("masked", "euler", 3, 5, 2, None)
    config = tmp_path / "sampling.yaml"
    config.write_text(doc_example("Adding a sampler", "yaml").replace("steps: 18", "steps: 3"))
    out = tmp_path / "samples.npz"
    argv = ["sample", "--run", str(gaussian_run), "--sampling", str(config), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress", "--batch-size", "16"]) == 0
    with np.load(out) as f:
        images = f["images"]
    assert images.dtype == np.uint8 and images.shape == (64, 8, 8, 1)
    # the flags are the same request; seeded per batch by sample_run
    request = requested("euler", 3, 64, sigma_min=0.002, sigma_max=80.0)
    again = sample_run(gaussian_run, request, batch_size=16, progress=False, device="cpu")
    np.testing.assert_array_equal(images, again)
    with pytest.raises(UserError, match="--eta applies to the ddim sampler only, not euler"):
        sample_run(gaussian_run, requested("euler", 3, 5, eta=0.5), progress=False, device="cpu")


def test_the_documented_estimator_and_figure_examples_register():
    """Run in their modules' namespaces, the examples register entries the rest reads."""
    from diffobj.commands import figures
    from diffobj.optimal import estimators

    exec(doc_example("Adding an optimal-loss estimator"), dict(vars(estimators)))
    try:
        assert "half" in estimators.estimator_names("gaussian", in_spec=True)
        assert "half" not in estimators.estimator_names("masked")
        estimators.check_estimator("half", 16, 4, None)
        with pytest.raises(UserError, match="--subset 1: must be in 2..16"):
            estimators.check_estimator("half", 16, 1, None)
    finally:
        estimators.ESTIMATORS.remove("half")
    exec(doc_example("Adding a figure"), dict(vars(figures)))
    try:
        entry = figures.FIGURES["gap_levels"]
        assert entry.outputs("R") == [
            "R/figures/gap_levels.png",
            "R/figures/gap_levels.pdf",
            "R/figures/gap_levels.csv",
        ]
        assert entry.inputs(None, "R") == ["R/tables/gap.parquet"]
    finally:
        figures.FIGURES.remove("gap_levels")


def misspelt(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "key", "names"),
    [
        (
            lambda s: s.setdefault("figures", []).append("gap_qualty"),
            r"figures\.\d+: unknown figure 'gap_qualty' \(known: \[",
            ["weighting_study", "gap_quality", "scaling", "samples"],
        ),
        (
            lambda s: s.setdefault("sampling", {}).update(gaussian_sampler="hune"),
            r"sampling\.gaussian_sampler: Input should be .*\(value 'hune'\)",
            ["'ddpm'", "'ddim'", "'heun'"],
        ),
        (
            lambda s: s.setdefault("sampling", {}).update(masked_sampler="ancestal"),
            r"sampling\.masked_sampler: Input should be .*\(value 'ancestal'\)",
            ["'ancestral'"],
        ),
        (
            lambda s: s.setdefault("optimal_loss", {}).update(estimator="snsi", subset=8),
            r"optimal_loss\.estimator: Input should be .*\(value 'snsi'\)",
            ["'exact'", "'snis'", "'cdol'"],
        ),
    ],
)
def test_a_misspelt_name_is_refused_with_the_known_names(tmp_path, edit, key, names):
    path = misspelt(tmp_path, edit)
    with pytest.raises(spec.SpecError) as err:
        spec.load(path, root=ROOT)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: ")
    assert re.search(key, message), message
    for name in names:
        assert name in message, (name, message)


def test_validate_refuses_an_unknown_figure_in_one_line(tmp_path):
    path = misspelt(tmp_path, lambda s: s.setdefault("figures", []).append("gap_qualty"))
    result = subprocess.run(
        [sys.executable, "-m", "diffobj.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown figure 'gap_qualty' (known: ['weightings', " in result.stderr
