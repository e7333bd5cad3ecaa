"""One-line errors for the spec that Snakemake reads before the Snakefile runs.

Snakemake parses `--configfile FILE` and `--config KEY=VALUE` in its own command line, before
any workflow code: a YAML error in the spec reads "Config file is not valid JSON or YAML" (no
file, no line), and `--config training.lr=0.01` prints a ValueError traceback. Snakemake
imports its plugins while it imports its own command line (the executor registry is built when
snakemake.workflow is imported), so this plugin is the one part of the project that runs early
enough. ``install`` wraps two functions:

- ``load_configfile``: a YAML syntax error is re-raised as a WorkflowError that names
  FILE:LINE:COLUMN (the same line as `diffobj validate` prints), a missing file as one that
  says so (Snakemake lets that FileNotFoundError through as a traceback);
- ``print_exception``, which Snakemake's command line and API bind after this import: that
  error and a bad --config entry print as one line, ``Error: ...``, without traceback.

Exit codes are Snakemake's (1). Nothing else changes: any other error is printed as before, and
if a Snakemake release moves these functions ``install`` leaves Snakemake as it is
(tests/test_workflow.py notices).
"""

import re
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import yaml
from snakemake_interface_common.exceptions import WorkflowError

from diffobj.errors import yaml_error_line

# the Snakefile's message for a --config key other than spec (the setting belongs in the spec)
ONLY_SPEC = "set it in the spec file instead; --config takes only spec=FILE"
CONFIG_FLAGS = ("--config", "-C")


class SpecFileError(WorkflowError):
    """A config file that is not valid YAML; the message names file, line and column."""


def yaml_located(load: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``load(path)``, raising SpecFileError on a YAML syntax error or a missing file."""

    @wraps(load)
    def wrapper(path: Any) -> Any:
        try:
            return load(path)
        except FileNotFoundError:  # Snakemake opens the file outside its own try
            raise SpecFileError(f"{path}: spec file not found") from None
        except WorkflowError:
            try:
                with open(path, encoding="utf-8") as file:
                    yaml.safe_load(file)
            except yaml.YAMLError as err:
                raise SpecFileError(yaml_error_line(path, err)) from None
            except (OSError, TypeError):  # not a readable path: Snakemake's message stands
                pass
            raise

    return _mark(wrapper)


def config_entries(argv: Sequence[str]) -> list[str]:
    """The KEY=VALUE words given to --config / -C (also as --config=KEY=VALUE)."""
    entries: list[str] = []
    taking = False
    for word in argv:
        flag, eq, value = word.partition("=")
        if flag in CONFIG_FLAGS:
            taking = not eq
            entries += [value] if eq else []
        elif word.startswith("-"):
            taking = False
        elif taking:
            entries.append(word)
    return entries


def bad_config_entry_message(entries: Sequence[str]) -> str | None:
    """The message for the first entry Snakemake cannot parse (or None when all parse)."""
    for entry in entries:
        key, sep, _ = entry.partition("=")
        if not sep:
            return f"--config {entry}: expected spec=FILE"
        if not re.match(r"[a-zA-Z_][\w-]*\w$", key):  # Snakemake's rule for a config key
            return f"--config {entry}: {key} is not a --config setting; {ONLY_SPEC}"
    return None


def plain_message(ex: BaseException, argv: Sequence[str]) -> str | None:
    """The one line for an error of the spec's command line, or None for any other error."""
    if isinstance(ex, SpecFileError):
        return str(ex)
    if isinstance(ex, ValueError) and str(ex).startswith("Invalid config definition"):
        return bad_config_entry_message(config_entries(argv))
    return None


def one_line(print_exception: Callable[..., Any]) -> Callable[..., Any]:
    """``print_exception(ex, linemaps)``, printing the spec's command-line errors as one line."""
    from snakemake.exceptions import CliException  # printed as "Error: <message>"

    @wraps(print_exception)
    def wrapper(ex: BaseException, linemaps: Any = None) -> Any:
        message = plain_message(ex, sys.argv[1:])
        return print_exception(CliException(message) if message else ex, linemaps)

    return _mark(wrapper)


def _mark(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    wrapper.diffobj_wrapped = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Wrap Snakemake's config reader and error printer (a second call changes nothing)."""
    try:
        import snakemake.common.configfile as configfile
        import snakemake.exceptions as exceptions
        import snakemake.settings.types as settings
    except ImportError:
        return
    # settings.types holds its own reference (a from-import); the `configfile:` directive
    # looks it up in snakemake.common.configfile at each call. snakemake.cli and snakemake.api
    # from-import print_exception after the plugins are imported; if they are already
    # imported (a program that imported them first) their references are wrapped too.
    targets = [
        (settings, "load_configfile", yaml_located),
        (configfile, "load_configfile", yaml_located),
        (exceptions, "print_exception", one_line),
    ]
    targets += [
        (sys.modules[name], "print_exception", one_line)
        for name in ("snakemake.cli", "snakemake.api")
        if name in sys.modules
    ]
    for module, name, wrap in targets:
        original = getattr(module, name, None)
        if original is not None and not getattr(original, "diffobj_wrapped", False):
            setattr(module, name, wrap(original))
