# Helpers shared by the rules: which files exist for this spec.
import json


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


def data_dir(dataset):
    return f"{R}/data/{dataset}"


def optimal_pairs():
    """(dataset, process) pairs of the grid: one optimal-loss table each."""
    return sorted({(r.dataset, r.process) for r in LOADED.runs})


def optimal_schedule(process):
    """The first schedule of the grid for this process; the optimal loss depends on lam only."""
    return next(r.schedule for r in LOADED.runs if r.process == process)


def run_files(name):
    return [f"{run_dir(r)}/{name}" for r in RUNS]


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
