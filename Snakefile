# diffobj: the experiment DAG. The spec is config/config.yaml unless given:
#   snakemake --cores all
#   snakemake --cores all --configfile config/experiments/scaling_digits.yaml
#   snakemake --profile slurm --configfile config/experiments/cifar10_weighting_study.yaml
# The spec is validated by diffobj.spec before any job runs; each rule is one `diffobj` command.

import os
import sys
from pathlib import Path

from diffobj.errors import UserError
from diffobj import shared_paths
from diffobj import spec as diffobj_spec

# rules call `diffobj`: make the one of this Python (e.g. .venv/bin) the one they find
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

DEFAULT_SPEC = Path(workflow.basedir) / "config" / "config.yaml"


configfile: str(DEFAULT_SPEC)


def shell_path(path):
    """A path for a job's command: relative to the working directory when inside it, so commands
    do not depend on how a file was named (and do not re-run when it is named differently),
    else absolute. Symlinks are kept, as diffobj.spec.spec_base keeps them."""
    absolute = Path(os.path.abspath(path))
    return os.path.relpath(absolute) if absolute.is_relative_to(Path.cwd()) else str(absolute)


def given_spec():
    """The spec is the file given with --configfile (the last one; cluster jobs get the same
    list), loaded whole by diffobj.spec: Snakemake merges it over config/config.yaml key by
    key, so the merged `config` would mix two experiments. `--config spec=FILE` works too."""
    files = [str(f) for f in workflow.overwrite_configfiles]
    overrides = dict(workflow.config_settings.config)
    other = sorted(set(overrides) - {"spec"})
    if other:
        raise UserError(
            f"--config {other[0]}=...: set it in the spec file instead; --config takes only spec=FILE"
        )
    if "spec" in overrides and files:
        raise UserError("give the spec once: --configfile FILE or --config spec=FILE, not both")
    return shell_path(overrides.get("spec") or (files[-1] if files else str(DEFAULT_SPEC)))


try:
    SPEC = given_spec()
    LOADED = diffobj_spec.load(SPEC)
    diffobj_spec.check_files(LOADED)
except UserError as err:
    sys.exit(f"diffobj: invalid spec: {err}")

EXP = LOADED.experiment
R = f"{shared_paths.ROOT}/{EXP}"  # its own outputs; shared work: results/shared/ (diffobj.shared_paths)
S = LOADED.spec
RUNS = {run.id: run for run in LOADED.runs}


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    dataset="[A-Za-z][A-Za-z0-9_]*",
    process="[A-Za-z][A-Za-z0-9_]*",
    folder="[A-Za-z0-9_-]+",  # a key folder of shared work: <label>-<digest>


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/optimal_loss.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/bounds.smk"


rule all:
    input:
        all_tables(),
        all_figures(),
        f"{R}/report.html" if "weighting_study" in S.figures else [],
        bounds_targets(),
    default_target: True
