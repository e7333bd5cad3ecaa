"""The ``diffobj`` command: one subcommand per workflow rule, each runnable by hand.

Each subcommand lives in ``diffobj.commands.<module>`` with ``add_arguments(parser)`` and
``run(args)``. Bad input raises UserError: one clear line, exit code 2, no output written.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from diffobj.allocator import keep_freed_memory
from diffobj.errors import UserError, missing_extra

# subcommand -> (module under diffobj.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("spec", "validate a spec and print its runs"),
    "weightings": ("weightings", "tabulate and plot the weightings of a spec"),
    "optimal-loss": ("optimal", "estimate the optimal loss per noise level"),
    "prepare-data": ("data", "prepare a dataset into images.npy / labels.npy / meta.json"),
    "train": ("train", "train one run"),
    "sample": ("sample", "sample from a trained run"),
    "train-features": ("features", "train the small classifier used for the classifier FD"),
    "fid-ref": ("fid", "reference statistics for FID or the classifier FD"),
    "fid": ("fid", "FID / classifier FD of samples against reference statistics"),
    "nll": ("nll", "negative log-likelihood bound in bits per dimension"),
    "tables": ("tables", "gather results into validated parquet tables"),
    "figures": ("figures", "draw the figures of an experiment"),
    "report": ("report", "the experiment's HTML report: study text and every figure"),
    "compare": ("compare", "experiments side by side, paired over their common seeds"),
    "bounds": ("bounds", "the cascade of improved bounds L^(i) of a trained run"),
    "bounds-table": ("bounds", "gather the runs' bounds into a table and draw its figure"),
    "rehearse": ("rehearse", "run a spec's whole DAG at toy size on this CPU, stand-in data"),
}


# the docstring's first line without its reST markup (argparse prints help as plain text)
DESCRIPTION = __doc__.splitlines()[0].replace("``", "")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffobj")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported.

    Every workflow job is one ``diffobj`` call, so importing each command's dependencies (torch,
    polars, pandera, seaborn) for every call would cost a second or more per job.
    """
    parser = argparse.ArgumentParser(
        prog="diffobj",
        description=DESCRIPTION,
        epilog="Each command's options: diffobj COMMAND --help. Exit code 2: bad input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if only not in (None, name):
            continue
        module = importlib.import_module(f"diffobj.commands.{module_name}")
        getattr(module, "add_arguments_" + name.replace("-", "_"), module.add_arguments)(cmd)
        cmd.set_defaults(
            func=getattr(module, "run_" + name.replace("-", "_"), getattr(module, "run", None))
        )
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one), or None."""
    return next((word for word in argv if word in COMMANDS), None)


THEN = "--then"  # `diffobj sample ... --then fid ... --then nll ...`: one process, in order


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand, or several joined by ``--then`` (each as it would run alone, in
    order, stopping at the first that fails): one Python and torch start-up instead of one per
    command, for workflow jobs whose commands each take about as long as that start-up."""
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()
    for command in _split(argv, THEN):
        status = _run(command)
        if status:
            return status
    return 0


def _split(argv: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in argv:
        if word == separator:
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def _run(argv: list[str]) -> int:
    parser = build_parser(only=_command_in(argv) or "")
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"diffobj {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional extra is not installed
        hint = missing_extra(err)
        if hint is None:
            raise
        print(f"diffobj {args.command}: error: {hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
