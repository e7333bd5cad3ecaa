"""Installs cleanly: every import is a declared dependency, the core runs without the extras,
and a command that needs an extra names it."""

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffobj.errors import EXTRAS

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# the optional modules blocked, as in an environment with only `pip install diffobj`
BLOCK_EXTRAS = f"import sys; sys.modules.update(dict.fromkeys({sorted(EXTRAS)!r}))"


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> one file importing it, for every import in src/ (lazy ones too)."""
    found = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("diffobj", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    found.pop("snakemake_executor_plugin_submitit", None)  # the package's own plugin
    return found


def test_every_import_is_declared_in_the_core_or_its_extra():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in PYPROJECT["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    for module, where in _third_party_imports().items():
        declared_in = extras[EXTRAS[module]] if module in EXTRAS else core
        names = {_name(d) for d in distributions[module]}
        assert names & declared_in, (
            f"{where} imports {module} ({sorted(names)}): declare it in "
            + (f"the {EXTRAS[module]} extra" if module in EXTRAS else "dependencies")
        )


def test_validate_and_help_run_with_the_core_dependencies_only():
    code = f"{BLOCK_EXTRAS}; from diffobj.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["validate", "config/config.yaml"], ["--help"]):
        run = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT
        )
        assert run.returncode == 0, run.stderr


def test_a_command_without_its_extra_names_the_extra(tmp_path):
    code = f"{BLOCK_EXTRAS}; from diffobj.cli import main; sys.exit(main(sys.argv[1:]))"
    command = ["tables", "--spec", "config/config.yaml", "--results", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-c", code, *command, "--out-dir", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "diffobj tables: error: this command needs 'polars', from the analysis extra: "
        'pip install "diffobj[analysis]"\n'
    )
