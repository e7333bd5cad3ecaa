"""Errors in what Snakemake reads before the Snakefile runs (`--configfile`, `--config`): one
line naming the file and position or the entry, a non-zero exit, no traceback; and the same
YAML message from `diffobj validate`."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffobj.cli import main
from diffobj.errors import yaml_error_line
from snakemake_executor_plugin_submitit import config_errors

ROOT = Path(__file__).resolve().parents[1]

# (text, line, column of the error as an editor counts them, a word of the reason)
MALFORMED = [
    ("experiment: x\n  datasets: 3\n", 2, 11, "mapping values are not allowed"),
    ("experiment: x\ngrid: [1, 2\n", 3, 1, "flow sequence (from line 2, column 7)"),
    ("experiment: x\ndatasets:\n\t- digits\n", 3, 1, "'\\t'"),
    ("experiment: 'x\n", 2, 1, "quoted scalar (from line 1, column 13)"),
]


@pytest.mark.parametrize(("text", "line", "column", "reason"), MALFORMED)
def test_a_yaml_error_is_one_line_with_file_line_and_column(tmp_path, text, line, column, reason):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(yaml.YAMLError) as err:
        yaml.safe_load(text)
    message = yaml_error_line(path, err.value)
    assert message.startswith(f"{path}:{line}:{column}: not valid YAML: ")
    assert reason in message and "\n" not in message


def test_validate_prints_the_same_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(MALFORMED[0][0])
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"diffobj validate: error: {path}:2:11: not valid YAML: mapping values are not allowed here"
    )


@pytest.mark.parametrize(
    ("argv", "entries"),
    [
        (["-n", "--config", "a=1", "b.c=2", "--cores", "1"], ["a=1", "b.c=2"]),
        (["-C", "x=1", "-n"], ["x=1"]),
        (["--config=training.lr=0.01", "-n"], ["training.lr=0.01"]),
        (["-n", "--configfile", "x.yaml"], []),
    ],
)
def test_config_entries_are_read_from_the_command_line(argv, entries):
    assert config_errors.config_entries(argv) == entries


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["spec=a.yaml", "training.lr=0.01"], "--config training.lr=0.01: training.lr is not"),
        (["training"], "--config training: expected spec=FILE"),
        (["spec=a.yaml"], None),
    ],
)
def test_the_first_entry_snakemake_rejects_is_named(entries, message):
    found = config_errors.bad_config_entry_message(entries)
    assert found == message or found.startswith(message)


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--configfile", "spec.yaml"],
            "Error: spec.yaml:2:11: not valid YAML: mapping values are not allowed here",
        ),
        (
            ["--config", "training.lr=0.01"],
            "Error: --config training.lr=0.01: training.lr is not a --config setting; "
            "set it in the spec file instead; --config takes only spec=FILE",
        ),
        (["--configfile", "missing.yaml"], "Error: missing.yaml: spec file not found"),
    ],
)
def test_snakemake_prints_one_line_and_fails(tmp_path, args, expected):
    (tmp_path / "spec.yaml").write_text(MALFORMED[0][0])
    run = snakemake(tmp_path, *args)
    assert run.returncode != 0
    output = run.stdout + run.stderr  # Snakemake's logger writes errors to stdout when piped
    assert expected in output.splitlines(), output
    assert "Traceback" not in output and "WorkflowError" not in output
