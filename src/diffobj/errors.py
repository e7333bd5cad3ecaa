"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class UserError(ValueError):
    """Bad input from the user: a spec, a file, an argument. The message names file, key and value."""


# Modules of the optional extras (pyproject.toml), so that a command run without its extra
# says what to install instead of printing a traceback. The core (torch, numpy, pyyaml,
# pydantic, sympy, tqdm) is always installed; tests/test_packaging.py keeps this in step.
EXTRAS: dict[str, str] = {
    "polars": "analysis",
    "pandera": "analysis",
    "seaborn": "analysis",
    "matplotlib": "analysis",
    "pyarrow": "analysis",
    "scipy": "analysis",
    "markdown": "analysis",
    "sklearn": "data",
    "PIL": "data",
    "snakemake": "workflow",
    "snakemake_interface_common": "workflow",
    "snakemake_interface_executor_plugins": "workflow",
    "submitit": "workflow",
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The install hint for a missing module of an extra, or None for anything else."""
    module = (err.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    return f'this command needs {module!r}, from the {extra} extra: pip install "diffobj[{extra}]"'


def yaml_error_line(path: object, err: Exception) -> str:
    """One line for a YAML parse error: ``FILE:LINE:COLUMN: not valid YAML: what``.

    PyYAML's own text spans several lines and names ``<unicode string>`` rather than the file;
    its marks are 0-based, editors count from 1. An unclosed bracket is reported where the file
    ends, so the line where the construct began is named too."""
    mark = getattr(err, "problem_mark", None)
    start = getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context = getattr(err, "context", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        context += f" (from line {start.line + 1}, column {start.column + 1})"
    parts = [context, getattr(err, "problem", None)]
    what = ", ".join(p for p in parts if p) or str(err).splitlines()[0]
    return f"{where}: not valid YAML: {what}"
