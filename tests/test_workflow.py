"""The Snakemake DAG: dry runs of every spec, bad specs stop before any job, and an end-to-end
run of a tiny spec whose tables all validate and whose figures all exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffobj.spec import load as load_spec

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]

TINY = {
    "experiment": "tiny",
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "processes": {
        "gaussian": {"kind": "gaussian", "log_snr_range": [-10, 10]},
        "masked": {"kind": "masked", "log_snr_range": [-9.21, 9.21]},
    },
    "models": {"tiny": {"preset": "mlp", "channels": 32, "num_blocks": 1}},
    "training": {
        "steps": 20,
        "batch_size": 32,
        "warmup_steps": 5,
        "checkpoint_every": 10,
        "log_every": 5,
        "precision": "fp32",
        "log_snr_bins": 8,
    },
    "grid": [
        {
            "dataset": "digits",
            "process": "gaussian",
            "schedule": "vp_cosine",
            "weighting": ["elbo", "iddpm"],
            "model": "tiny",
        },
        {
            "dataset": "digits",
            "process": "masked",
            "schedule": "md4_cosine",
            "weighting": ["simple"],
            "model": "tiny",
        },
    ],
    "optimal_loss": {"levels": 6, "queries": 128},
    "sampling": {"num": 32, "gaussian_steps": 4, "masked_steps": 8},
    "evaluation": {"features_epochs": 1},
    "figures": [
        "weightings",
        "weighting_study",
        "optimal_loss",
        "gap",
        "convergence",
        "training_curves",
        "samples",
    ],
}


def snakemake(workdir: Path, spec: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--config", f"spec={spec}", *args],
        capture_output=True,
        text=True,
        cwd=workdir,
    )


def linked_spec(workdir: Path, spec: str) -> Path:
    """``spec`` (a path under config/) as it sits in a checkout at ``workdir``: config/ linked
    from the repository, so the spec's relative dataset paths (data/...) start at ``workdir``
    (diffobj.spec.spec_base), where the tests put their stand-ins."""
    (workdir / "config").symlink_to(ROOT / "config")
    return workdir / spec


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    table = re.search(r"job\s+count\n[-\s]+\n(.*?)\n\s*total", result.stdout + result.stderr, re.S)
    assert table, result.stdout + result.stderr
    return {
        name: int(count) for name, count in re.findall(r"^(\S+)\s+(\d+)$", table.group(1), re.M)
    }


@pytest.mark.parametrize(
    "spec",
    [
        "config/config.yaml",
        "config/experiments/cifar10_weighting_study.yaml",
        "config/experiments/scaling_digits.yaml",
        "config/experiments/optimal_loss_schedule.yaml",
    ],
)
def test_every_spec_dry_runs(tmp_path, spec):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(
        b"stand-in: the dry run reads no data"
    )
    result = snakemake(tmp_path, linked_spec(tmp_path, spec), "-n")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["train"] >= 8 and jobs["all"] == 1


@pytest.mark.parametrize(
    ("spec", "runs", "estimator", "device"),
    [
        ("optimal_loss_schedule_cifar10", 8, "--estimator exact ", " --device cuda"),
        ("scaling_imagenet64", 4, "--estimator cdol --subset 16384", " --device cuda"),
        ("optimal_loss_schedule", 8, "--estimator exact ", None),
    ],
)
def test_optimal_loss_runs_on_the_device_its_resources_ask_for(
    tmp_path, spec, runs, estimator, device
):
    """GPU specs put the estimator on the GPU; a CPU spec's command is left as it was (the
    command's default is the CPU), so results already made are not planned again."""
    (tmp_path / "data" / "imagenet64").mkdir(parents=True)  # stand-ins: the dry run reads none
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"stand-in")
    result = snakemake(
        tmp_path, linked_spec(tmp_path, f"config/experiments/{spec}.yaml"), "-n", "-p"
    )
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["train"] == runs and jobs["optimal_loss"] >= 1
    commands = re.findall(r"diffobj optimal-loss .*$", result.stdout + result.stderr, re.M)
    assert len(commands) == jobs["optimal_loss"] + jobs.get("optimal_loss_convergence", 0)
    for command in commands:
        assert estimator in command or "--convergence" in command
        assert (device in command) if device else ("--device" not in command)


@pytest.mark.parametrize(
    ("spec", "runs", "bounds"),
    [("conditional_digits", 9, True), ("st_imagenet64", 6, False)],
)
def test_class_conditional_specs_dry_run(tmp_path, spec, runs, bounds):
    (tmp_path / "data" / "imagenet64").mkdir(parents=True)  # stand-in: the dry run reads no data
    result = snakemake(
        tmp_path, linked_spec(tmp_path, f"config/experiments/{spec}.yaml"), "-n", "-p"
    )
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["train"] == jobs["sample"] == runs
    assert jobs.get("bounds", 0) == (runs if bounds else 0)
    assert ("bounds_table" in jobs) is bounds
    assert jobs["sampling_config"] == runs
    assert result.stdout.count("--sampling results/") == runs  # each run's sampling.yaml
    # the guidance each run's sampling.yaml holds (every run here is class-conditional)
    loaded = load_spec(tmp_path / "config" / "experiments" / f"{spec}.yaml", root=tmp_path)
    guidance = {loaded.resolved_sampling(run)["guidance"] for run in loaded.runs}
    assert guidance == ({1.0} if spec == "conditional_digits" else {0.0})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["grid"][0].update(weighting=["nope"]), "unknown weighting 'nope'"),
        (
            lambda s: s["figures"].append("gap_qualty"),
            "figures.7: unknown figure 'gap_qualty' (known: ['weightings', ",
        ),
        (
            lambda s: (
                s.update(weightings={"bad": "lam +* 2"}) or s["grid"][0].update(weighting=["bad"])
            ),
            "weightings.bad.expr",
        ),
        (
            lambda s: s["datasets"].update(digits={"source": "cifar10", "path": "missing.tar.gz"}),
            "'missing.tar.gz' does not exist; download cifar-10-python.tar.gz",
        ),
    ],
)
def test_bad_spec_stops_before_any_job(tmp_path, edit, message):
    spec = yaml.safe_load(yaml.safe_dump(TINY))
    edit(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = snakemake(tmp_path, path, "--cores", "1")
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "results").exists()


def run_tiny(workdir: Path) -> tuple[Path, Path]:
    spec = workdir / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    result = snakemake(workdir, spec, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, spec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny spec run end to end; every test that uses it is marked slow."""
    return run_tiny(tmp_path_factory.mktemp("e2e"))


# the tables TINY makes (bounds only with evaluation.bounds)
PRODUCED = [
    "runs",
    "weightings",
    "training",
    "training_log",
    "evaluation",
    "study",
    "optimal_loss",
    "gap",
]
# columns that measure the machine's speed, not the experiment
TIMING_COLUMNS = {"images_per_s", "peak_mem_mb"}


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_the_dag_twice_gives_identical_tables_apart_from_timing(finished, tmp_path):
    import polars as pl

    from diffobj.analysis import tables

    first = finished[0] / "results" / "tiny"
    second = run_tiny(tmp_path)[0] / "results" / "tiny"
    for name in PRODUCED:
        a, b = (pl.read_parquet(d / "tables" / f"{name}.parquet") for d in (first, second))
        keep = [c for c in a.columns if c not in TIMING_COLUMNS]
        assert a.select(keep).equals(b.select(keep)), name
        if not TIMING_COLUMNS & set(a.columns):
            a_bytes, b_bytes = (
                (d / "tables" / f"{name}.parquet").read_bytes() for d in (first, second)
            )
            assert a_bytes == b_bytes, name
        assert tables.read_provenance(
            first / "tables" / f"{name}.parquet"
        ) == tables.read_provenance(second / "tables" / f"{name}.parquet")
    report = [(d / "figures" / "weighting_study.md").read_text() for d in (first, second)]
    assert report[0] == report[1]


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_tables_and_report_carry_provenance(finished):
    from diffobj.analysis import tables

    results = finished[0] / "results" / "tiny"
    record = tables.read_provenance(results / "tables" / "evaluation.parquet")
    for key in (
        "diffobj",
        "git_commit",
        "git_dirty",
        "python",
        "torch",
        "numpy",
        "cpu",
        "spec_sha256",
    ):
        assert key in record, key
    assert record["seeds"] == [0]
    assert record["jobs"]["train"] and all("1 thread(s)" in j for j in record["jobs"]["train"])
    text = (results / "figures" / "weighting_study.md").read_text()
    assert f"spec_sha256: {record['spec_sha256']}" in text


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_end_to_end_tables_validate_and_figures_exist(finished):
    from diffobj.analysis import tables

    workdir, _ = finished
    results = workdir / "results" / "tiny"
    for name in PRODUCED:
        frame = tables.read(name, results / "tables" / f"{name}.parquet")
        assert frame.height > 0, name
    evaluation = tables.read("evaluation", results / "tables" / "evaluation.parquet")
    assert (
        evaluation["fd_classifier"].is_not_null().all()
        and evaluation["nll_bpd"].is_not_null().all()
    )
    for figure in TINY["figures"]:
        for suffix in (".png", ".pdf"):
            assert (results / "figures" / f"{figure}{suffix}").stat().st_size > 1000, figure


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_adding_a_weighting_reruns_only_its_jobs_and_the_aggregates(finished):
    workdir, spec = finished
    grown = yaml.safe_load(spec.read_text())
    grown["grid"][0]["weighting"].append("fm")
    spec.write_text(yaml.safe_dump(grown))
    jobs = planned_jobs(snakemake(workdir, spec, "-n"))
    per_run = {"run_config", "sampling_config", "train", "sample", "fd_classifier", "nll"}
    assert {name: jobs[name] for name in per_run} == dict.fromkeys(per_run, 1)
    aggregates = {"weightings", "tables", "report", "all"} | {
        f"figure_{f}" for f in TINY["figures"] if f != "weightings"
    }
    assert set(jobs) - per_run <= aggregates
    assert "prepare_data" not in jobs and "optimal_loss" not in jobs


# the rules of the work experiments share (results/shared/, diffobj.shared_paths)
SHARED_RULES = {
    "prepare_data",
    "optimal_loss",
    "optimal_loss_convergence",
    "train_features",
    "fd_reference",
    "fd_real",
    "fid_reference",
}


def planned_commands(result: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """Rule -> the shell commands a `snakemake -n -p` plans for it."""
    commands: dict[str, set[str]] = {}
    jobs = re.split(r"^(?=(?:local)?rule \w+:$)", result.stdout + result.stderr, flags=re.M)
    for job in jobs[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", job).group(1)
        command = re.search(r"^Shell command: (.*)$", job, re.M)
        commands.setdefault(rule, set()).update([command.group(1)] if command else [])
    return commands


def test_two_experiments_differing_in_name_plan_the_same_shared_jobs(tmp_path):
    plans = {}
    for experiment in ("tiny", "tiny_copy"):
        spec = tmp_path / f"{experiment}.yaml"
        spec.write_text(yaml.safe_dump({**TINY, "experiment": experiment}))
        result = snakemake(tmp_path, spec, "-n", "-p")
        assert result.returncode == 0, result.stderr[-5000:]
        plans[experiment] = planned_commands(result)
    shared = {rule: plans["tiny"][rule] for rule in SHARED_RULES & set(plans["tiny"])}
    # one data set, two optimal-loss tables (a kind each), the Gaussian estimator study, the
    # classifier with its two FD references
    counts = {"prepare_data": 1, "optimal_loss": 2, "optimal_loss_convergence": 1}
    counts |= {"train_features": 1, "fd_reference": 1, "fd_real": 1}
    assert {rule: len(commands) for rule, commands in shared.items()} == counts
    assert {r: plans["tiny_copy"][r] for r in SHARED_RULES & set(plans["tiny_copy"])} == shared
    for command in set().union(*shared.values()):
        assert "results/shared/" in command and "tiny" not in command, command
    own = set().union(*(plans["tiny"][r] for r in set(plans["tiny"]) - SHARED_RULES))
    assert all("tiny_copy" not in c for c in own)
    assert all("results/tiny/" in c for c in own if "diffobj" in c)


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_a_copied_spec_under_another_name_plans_only_its_own_jobs(finished):
    workdir, _ = finished
    copied = workdir / "copy.yaml"
    copied.write_text(yaml.safe_dump({**TINY, "experiment": "tiny_copy"}))
    jobs = planned_jobs(snakemake(workdir, copied, "-n"))
    assert not SHARED_RULES & set(jobs)
    per_run = {"run_config", "train", "sample", "fd_classifier", "nll"}
    assert {name: jobs[name] for name in per_run} == dict.fromkeys(per_run, 3)


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_one_job_per_run_writes_what_the_separate_jobs_wrote(finished, tmp_path):
    # evaluation.one_job_per_run chains sample, fid and nll in one process per run; on the
    # finished DAG's trained runs it must write the same samples, FD and NLL, to the bit
    import json
    import shutil

    import numpy as np

    workdir, spec = finished
    copy = tmp_path / "copy"
    shutil.copytree(workdir / "results", copy / "results", symlinks=True)
    combined = yaml.safe_load(spec.read_text())
    combined["evaluation"]["one_job_per_run"] = True
    path = copy / "combined.yaml"
    path.write_text(yaml.safe_dump(combined))
    runs = sorted(p.name for p in (copy / "results" / "tiny" / "runs").iterdir())
    names = ("samples.npz", "fd_classifier.json", "nll.json")
    targets = [f"results/tiny/runs/{run}/{name}" for run in runs for name in names]
    for target in targets:
        (copy / target).unlink()
    result = snakemake(copy, path, "--cores", "2", *targets)
    assert result.returncode == 0, result.stderr[-5000:]
    jobs = planned_jobs(result)
    assert jobs["evaluate_run"] == len(runs)
    assert not {"sample", "fd_classifier", "nll"} & set(jobs)
    for target in targets:
        before, after = workdir / target, copy / target
        if target.endswith(".npz"):
            assert np.array_equal(np.load(before)["images"], np.load(after)["images"])
            continue
        timing = {"runtime", "seconds", "samples", "run", "data", "ref"}  # paths and clocks
        old, new = json.loads(before.read_text()), json.loads(after.read_text())
        assert {k: v for k, v in old.items() if k not in timing} == {
            k: v for k, v in new.items() if k not in timing
        }, target


CHROMIUM = Path("/usr/bin/chromium")
# flags for a closed network and a root user (no sandbox), as the machines here need
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow  # the tiny spec's end-to-end run (minutes on 2 cores)
def test_the_report_opens_in_a_browser_with_every_image_loaded(finished):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    report = finished[0] / "results" / "tiny" / "report.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(report.as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])"
        )
        heading = page.text_content("h1")
        browser.close()
    assert heading == "Weighting study"
    assert sorted(alt for alt, _ in images) == sorted(TINY["figures"])
    assert all(loaded for _, loaded in images), images
