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
