"""The `diffobj` command's own interface: every subcommand documented in the README, every
option explained by --help, --version the installed package's version."""

import argparse
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from diffobj import cli

ROOT = Path(__file__).resolve().parents[1]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def readme_commands() -> set[str]:
    """The subcommands named in the README's command list (its code block of `diffobj` lines)."""
    section = (ROOT / "README.md").read_text().split("## Commands", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return set(re.findall(r"^diffobj ([a-z][a-z-]*)", block, re.M))


def test_the_readme_lists_every_subcommand_and_no_other():
    assert readme_commands() == set(cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_option_has_a_help_text(name):
    parser = subparsers()[name]
    unexplained = [
        action.option_strings or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not unexplained, f"diffobj {name}: options without help: {unexplained}"


def test_help_texts_do_not_name_removed_settings():
    # training.adaptive became training.density: adaptive_corrected
    texts = [a.help or "" for p in subparsers().values() for a in p._actions]
    assert not [t for t in texts if "training.adaptive" in t]


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffobj {version('diffobj')}"


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "--version" in out and "report" in out
