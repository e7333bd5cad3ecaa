"""The rehearsal of a spec: derived from the spec, same DAG, toy sizes, stand-in data.

The rehearsals themselves run end to end in .ci/run (`make rehearse`); here, what each
rehearsal spec keeps and changes, against the spec it came from."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffobj import rehearsal
from diffobj import spec as spec_mod
from diffobj.commands.rehearse import fresh_folder, jobs_done
from diffobj.data import load_source
from diffobj.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "config" / "experiments").glob("*.yaml")) + [ROOT / "config/config.yaml"]


@pytest.fixture(scope="module", params=SPECS, ids=lambda p: p.stem)
def pair(request, tmp_path_factory):
    """(the spec, its rehearsal), prepared with random Inception weights."""
    workdir = tmp_path_factory.mktemp(request.param.stem)
    prepared = rehearsal.prepare(request.param, workdir, inception="random")
    return prepared.original, prepared


def test_the_same_runs_processes_schedules_weightings_and_densities(pair):
    original, prepared = pair
    rehearsed = prepared.loaded
    assert [r.id for r in rehearsed.runs] == [r.id for r in original.runs] == prepared.runs
    for a, b in zip(original.runs, rehearsed.runs, strict=True):
        assert (a.process_cfg, a.schedule_entry, a.weighting_entry) == (
            b.process_cfg,
            b.schedule_entry,
            b.weighting_entry,
        )
        for key in ("density", "adaptive", "augment_p", "lr", "lr_decay", "adam_beta2"):
            assert a.training_cfg[key] == b.training_cfg[key], (a.id, key)
    assert rehearsed.experiment == original.experiment + "_rehearsal"


def test_the_same_networks_only_narrower_and_shallower_in_the_same_order(pair):
    original, prepared = pair
    rehearsed = prepared.loaded
    kept = (
        "preset",
        "channel_mult",
        "attention_resolutions",
        "dropout",
        "num_classes",
        "label_dropout",
        "augment_dim",
    )
    for name, model in original.spec.models.items():
        small = rehearsed.spec.models[name]
        assert {k: getattr(small, k) for k in kept} == {k: getattr(model, k) for k in kept}
        assert small.channels < model.channels or small.channels <= 16
        assert small.num_blocks <= model.num_blocks
        if model.embed_dim and model.preset == "edm_ddpmpp":  # EDM's multiple of the channels
            assert small.embed_dim // small.channels == model.embed_dim // model.channels
    # a scaling study's sizes keep their order: widths and depths divided by one factor
    for key in ("channels", "num_blocks"):
        for a, b in itertools.combinations(original.spec.models, 2):
            before = getattr(original.spec.models[a], key) - getattr(original.spec.models[b], key)
            after = getattr(rehearsed.spec.models[a], key) - getattr(rehearsed.spec.models[b], key)
            same_kind = (original.spec.models[a].preset == "mlp") == (
                original.spec.models[b].preset == "mlp"
            )
            if same_kind:
                assert np.sign(before) == np.sign(after), (a, b, key)


def test_widths_and_depths_shrink_by_one_factor():
    models = {
        "small": {"channels": 64, "num_blocks": 3},
        "big": {"channels": 192, "num_blocks": 6, "embed_dim": 768},
        "mlp": {"preset": "mlp", "channels": 256, "num_blocks": 3},
    }
    shrunk = rehearsal.shrink_models(models)
    assert [shrunk[n]["channels"] for n in models] == [8, 24, 16]
    assert [shrunk[n]["num_blocks"] for n in models] == [1, 2, 1]
    assert shrunk["big"]["embed_dim"] == 4 * 24 and list(shrunk) == list(models)


def test_the_same_evaluations_samplers_and_figures_at_toy_sizes(pair):
    original, prepared = pair
    o, r = original.spec, prepared.loaded.spec
    for flag in ("fd_classifier", "fid", "nll", "bounds", "one_job_per_run", "nll_time_sampling"):
        assert getattr(r.evaluation, flag) == getattr(o.evaluation, flag), flag
    for key in ("gaussian_sampler", "masked_sampler", "masked_grid", "guidance", "sigma_min"):
        assert getattr(r.sampling, key) == getattr(o.sampling, key), key
    assert r.figures == o.figures
    assert (r.optimal_loss.enabled, r.optimal_loss.estimator) == (
        o.optimal_loss.enabled,
        o.optimal_loss.estimator,
    )
    assert r.optimal_loss.convergence == o.optimal_loss.convergence
    for run in prepared.loaded.runs:
        t = run.training_cfg
        assert (t["steps"], t["batch_size"], t["compile"]) == (4, 8, False)
        assert t["checkpoint_every"] < t["steps"] and t["log_snr_bins"] <= 8
    assert r.sampling.num <= 16 and r.optimal_loss.queries <= 64
    assert r.evaluation.features_epochs == 1
    assert all(getattr(r.resources, s).gpus == 0 for s in type(r.resources).model_fields)


def test_downloads_become_stand_ins_of_the_same_shape_and_fid_names_its_weights(pair):
    original, prepared = pair
    rehearsed = prepared.loaded
    spec_mod.check_files(rehearsed)  # every file the spec reads is there
    for name, dataset in original.spec.datasets.items():
        if dataset.source == "sklearn_digits":
            assert name not in prepared.stand_ins
            continue
        loaded = load_source(dataset.source, prepared.workdir / prepared.stand_ins[name])
        side = {"cifar10": 32, "imagenet64": 64}[dataset.source]
        assert loaded.train.images.shape[1:] == (side, side, 3)
        assert np.unique(loaded.train.images).size > 200  # noise, not a real image
    if original.spec.evaluation.fid:
        assert prepared.inception == "random"
        weights = prepared.workdir / rehearsed.spec.evaluation.inception_weights
        assert weights.name == rehearsal.RANDOM_INCEPTION and weights.is_file()
    else:
        assert (
            prepared.inception is None
            and not (prepared.workdir / rehearsal.RANDOM_INCEPTION).exists()
        )


def test_gpu_switches_put_every_run_in_bf16_with_compile(tmp_path):
    prepared = rehearsal.prepare(
        ROOT / "config/experiments/md4_cifar10.yaml", tmp_path, gpu_switches=True
    )
    (run,) = prepared.loaded.runs
    assert run.training_cfg["precision"] == "bf16" and run.training_cfg["compile"] is True


def test_gpu_switches_on_a_cpu_only_when_asked(monkeypatch):
    from diffobj.devices import GPU_SWITCHES_ON_CPU, gpu_switches
    from diffobj.runs import autocast_for
    from diffobj.training.train_data import model_input

    cpu = torch.device("cpu")
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    monkeypatch.delenv(GPU_SWITCHES_ON_CPU, raising=False)
    assert not gpu_switches(cpu)
    with autocast_for(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert model_input(images, "gaussian", cpu).is_contiguous()
    monkeypatch.setenv(GPU_SWITCHES_ON_CPU, "1")
    assert gpu_switches(cpu)
    with autocast_for(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for(cpu, "fp32"):  # the run's precision still decides
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    x = model_input(images, "gaussian", cpu)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_grid_entry_overrides_keep_their_keys_and_lose_their_sizes():
    overrides = {"density": "optimal_loss_schedule", "steps": 5000, "warmup_steps": 0}
    assert rehearsal.shrink_overrides(overrides, gpu_switches=False) == {
        "density": "optimal_loss_schedule",
        "steps": 4,
        "warmup_steps": 0,
    }


def test_run_targets_name_the_runs_files_and_refuse_unknown_runs(tmp_path):
    prepared = rehearsal.prepare(ROOT / "config/experiments/md4_cifar10.yaml", tmp_path)
    (run,) = prepared.runs
    assert rehearsal.run_targets(prepared, [run]) == [
        f"results/md4_cifar10_rehearsal/runs/{run}/{name}"
        for name in ("model.pt", "samples.npz", "nll.json")
    ]
    with pytest.raises(UserError, match=r"--run 'nope' is not a run of the grid"):
        rehearsal.run_targets(prepared, ["nope"])


def test_a_folder_that_is_not_a_rehearsals_is_never_emptied(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("results")
    with pytest.raises(UserError, match=r"mine: exists and is not a rehearsal's folder"):
        fresh_folder(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").exists()
    folder = fresh_folder(tmp_path / "r")
    (folder / "old.txt").write_text("an old rehearsal's")
    assert list(fresh_folder(tmp_path / "r").iterdir()) == [folder / ".diffobj-rehearsal"]


def test_jobs_done_reads_snakemakes_last_count():
    log = "1 of 10 steps (10%) done\n...\n9 of 10 steps (90%) done\nError in rule fid:\n"
    assert jobs_done(log) == 9 and jobs_done("Building DAG of jobs...\n") == 0


def test_a_rehearsal_spec_says_it_is_one(tmp_path):
    prepared = rehearsal.prepare(ROOT / "config/experiments/md4_cifar10.yaml", tmp_path)
    text = prepared.spec_path.read_text()
    assert text.startswith("# A REHEARSAL of")
    assert yaml.safe_load(text)["description"].startswith("REHEARSAL")


def test_a_failed_rehearsal_prints_the_failed_jobs_log(tmp_path, capsys):
    import os
    import sys

    from diffobj.commands.rehearse import execute

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "fid.log").write_text("Traceback ...\nValueError: the reason\n")
    snakemake_like = (
        "print('1 of 3 steps (33%) done');"
        "print('    log: logs/fid.log (check log file(s) for error details)');"
        "raise SystemExit(1)"
    )
    ok, _, _, jobs = execute([sys.executable, "-c", snakemake_like], dict(os.environ), tmp_path)
    out = capsys.readouterr().out
    assert not ok and jobs == 1
    assert "snakemake.log ends:" in out and "logs/fid.log ends:" in out
    assert "ValueError: the reason" in out
