"""Every `snakemake` command of README.md, docs/ and the experiment files plans the experiment
it names: dry runs (`-n`) in a directory laid out like the repository, and the experiment read
from the planned paths results/<experiment>/."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffobj import shared_paths

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))
# a command line, in a code block or a comment ("# Small enough for a CPU:  snakemake ...")
COMMAND = re.compile(
    r"^[^\S\n]*#?[^\S\n]*(?:[^\n:]*:[^\S\n]+)?(?:\.venv/bin/)?(snakemake\b[^#\n]*)", re.M
)
PLACEHOLDER = re.compile(r"config/experiments/(?:<\w+>|X)\.yaml")


def documented_commands() -> list[tuple[str, str]]:
    """(command, source file) for every snakemake command line; placeholders expanded."""
    found = {}
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Snakefile"]
    sources += EXPERIMENTS
    for source in sources:
        text = source.read_text()
        if source.suffix == ".md":  # commands inside fenced code blocks only
            text = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S))
        for command in COMMAND.findall(text):
            command = " ".join(command.split())
            if "--report" in command:
                continue  # needs finished results; not a plan
            for spec in EXPERIMENTS if PLACEHOLDER.search(command) else [None]:
                concrete = (
                    PLACEHOLDER.sub(f"config/experiments/{spec.name}", command) if spec else command
                )
                found.setdefault(concrete, source.relative_to(ROOT).as_posix())
    return sorted(found.items())


def expected_experiment(command: str) -> str:
    given = re.search(r"--configfile (\S+)", command)
    path = ROOT / given.group(1) if given else ROOT / "config" / "config.yaml"
    return yaml.safe_load(path.read_text())["experiment"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A working directory like the repository root (the commands are run from it), with a
    stand-ins for the CIFAR-10 archive and the ImageNet-64 folder that the dry run never reads."""
    workdir = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "workflow", "config", "slurm"):
        (workdir / name).symlink_to(ROOT / name)
    (workdir / "data").mkdir()
    (workdir / "data" / "cifar-10-python.tar.gz").write_bytes(b"stand-in")
    (workdir / "data" / "imagenet64").mkdir()  # the downsampled ImageNet folder (st_imagenet64)
    return workdir


def test_the_docs_document_the_default_and_every_experiment():
    commands = [c for c, _ in documented_commands()]
    planned = {expected_experiment(c) for c in commands}
    assert planned == {"default"} | {
        yaml.safe_load(p.read_text())["experiment"] for p in EXPERIMENTS
    }
    assert any("--profile slurm --configfile" in c for c in commands)


@pytest.mark.slow  # one dry run (~10 s) per documented command
@pytest.mark.parametrize(("command", "source"), documented_commands())
def test_documented_command_plans_the_experiment_it_names(layout, command, source):
    argv = [sys.executable, "-m", "snakemake", *command.split()[1:], "-n"]
    run = subprocess.run(argv, cwd=layout, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{source}: {command}\n{output[-3000:]}"
    # results/shared/ holds what experiments share (diffobj.shared_paths), named by no experiment
    planned = set(re.findall(r"results/([A-Za-z0-9_]+)/", output)) - {shared_paths.SHARED}
    assert planned == {expected_experiment(command)}, f"{source}: {command}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "training=3"], "--config training=...: set it in the spec file instead"),
        (
            ["--configfile", "config/config.yaml", "--config", "spec=config/config.yaml"],
            "give the spec once",
        ),
    ],
)
def test_config_that_would_be_ignored_stops_the_workflow(layout, args, message):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args], cwd=layout, capture_output=True, text=True
    )
    assert run.returncode != 0 and message in run.stderr
