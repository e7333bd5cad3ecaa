# Helpers shared by the rules: which files exist for this spec.
import json

from diffobj import shared_paths
from diffobj.shared_paths import CLASSIFIER, FD_REFERENCE, IMAGES, KEY_FILE, TEST_FD, TEST_IMAGES
from diffobj.shared_paths import CONVERGENCE, DATA, FEATURES, INCEPTION, OPTIMAL


# A job's output is appended to one file per process, LOG.rank0, LOG.rank1, ... (RANK set by
# the executor under DDP, 0 otherwise), and LOG links to rank 0's. Snakemake deletes LOG each
# time it starts the job: on every DDP task (each runs the job command) and on every retry
# or requeue. Written to directly, LOG lost the earlier attempts' output and, when a later
# task started, rank 0's; the rank files survive both (docs/slurm.md).
LOG_LINK = 'ln -sfn "$(basename "{log}").rank0" "{log}"; '
LOG = ' >> "{log}.rank${{RANK:-0}}" 2>&1'


def run_dir(run_id):
    return f"{R}/runs/{run_id}"


def kind(process):
    return S.processes[process].kind


def dataset_of(wildcards):
    return RUNS[wildcards.run].dataset


def data_file(dataset, file):
    """A file of the dataset's prepared folder (results/shared/data/, diffobj.shared_paths)."""
    return str(shared_paths.data_file(LOADED, dataset, file))


# Shared work (diffobj.shared_paths): its rules' outputs are patterns in the wildcard
# {folder}, a key folder's name; each job's command and params come from the folder's key
# alone, so a copied spec under another experiment name reruns none of it.
SHARED_KEYS = {work: shared_paths.keys(LOADED, work) for work in shared_paths.WORKS}
# written by the job that makes the folder, beside its outputs: what the digest stands for
# (no newline: `sha256sum key.json` starts with the digest)
WRITE_KEY = "printf '%s' {params.key:q} > {output.key}; "


def shared_key(work, folder):
    return SHARED_KEYS[work][folder]


def shared_output(work, file):
    return str(shared_paths.path(work, "{folder}", file))


def shared_outputs(work):
    """Every file of a key folder of ``work``: its files, then key.json (named ``key``)."""
    return {"files": [shared_output(work, f) for f in work.files], "key": shared_output(work, KEY_FILE)}


def shared_log(rule):
    return str(shared_paths.log_file(rule, "{folder}"))


def key_param(work):
    return lambda wildcards: shared_paths.key_text(shared_key(work, wildcards.folder))


def data_input(work, file):
    """``file`` of the data folder that the key of a folder of ``work`` names (its "data")."""
    return lambda w: str(shared_paths.path(DATA, shared_key(work, w.folder)["data"], file))


def optimal_pairs():
    """(dataset, process) pairs of the grid: one optimal-loss table each."""
    return sorted({(r.dataset, r.process) for r in LOADED.runs})




def run_files(name):
    return [f"{run_dir(r)}/{name}" for r in RUNS]


def optimal_table(dataset, process):
    return str(shared_paths.optimal_table(LOADED, dataset, process))


def all_tables():
    names = ["runs", "weightings", "training", "training_log", "evaluation", "study"]
    if S.optimal_loss.enabled:
        names += ["optimal_loss", "gap"]
    return [f"{R}/tables/{n}.parquet" for n in names]


def all_figures():
    return [f"{R}/figures/{name}.png" for name in S.figures]


def stage_threads(*stages):
    """Threads of a stage's jobs, from the spec's resources.<stage>; of a job doing the work of
    several stages in turn, the most of them."""
    return max(getattr(S.resources, stage).threads for stage in stages)


def stage_resources(*stages, resumable=False):
    """Snakemake resources of a stage's jobs, from the spec's resources.<stage>: what the
    experiment needs belongs to the experiment (the profile holds the cluster's settings).
    A job doing the work of several stages in turn gets the most of each need and the sum of
    their walltimes. A retry gets `attempt` times the walltime; a resumable job is requeued at
    its walltime instead, so it keeps it."""
    needs = [getattr(S.resources, stage) for stage in stages]
    walltime = sum(need.runtime for need in needs)
    runtime = walltime if resumable else (lambda wildcards, attempt: walltime * attempt)
    return {
        "gpu": max(need.gpus for need in needs),
        "mem_mb": max(need.mem_mb for need in needs),
        "runtime": runtime,
    }
