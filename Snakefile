# diffobj: the experiment DAG. The spec is config/config.yaml unless given:
#   snakemake --cores all
#   snakemake --cores all --config spec=config/experiments/cifar10_weighting_study.yaml
#   snakemake --profile slurm
# The spec is validated by diffobj.spec before any job runs; each rule is one `diffobj` command.

import os
import sys
from pathlib import Path

from diffobj.errors import UserError
from diffobj import spec as diffobj_spec

# rules call `diffobj`: make the one of this Python (e.g. .venv/bin) the one they find
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

SPEC = config.get("spec", "config/config.yaml")
try:
    LOADED = diffobj_spec.load(SPEC)
    diffobj_spec.check_files(LOADED)
except UserError as err:
    sys.exit(f"diffobj: invalid spec: {err}")

EXP = LOADED.experiment
R = f"results/{EXP}"
S = LOADED.spec
RUNS = {run.id: run for run in LOADED.runs}


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    dataset="[A-Za-z][A-Za-z0-9_]*",
    process="[A-Za-z][A-Za-z0-9_]*",


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
        bounds_targets(),
    default_target: True
