# One sampling per run. The resolved sampling config is a param (as train.smk's run config), so
# a run re-samples only when its own sampling changes (its process's sampler, steps, grid, ...).

from diffobj.sampling.config import dump_sampling_config


rule sampling_config:
    output:
        f"{R}/runs/{{run}}/sampling.yaml",
    params:
        resolved=lambda w: json.dumps(LOADED.resolved_sampling(RUNS[w.run]), sort_keys=True),
    localrule: True
    run:
        # in the Snakemake process, which holds the validated spec: no job start-up
        with atomic_path(output[0]) as tmp:
            tmp.write_text(dump_sampling_config(LOADED.resolved_sampling(RUNS[wildcards.run])))


def sample_command(run):
    """`diffobj sample` of one run (without the program name): shared with evaluate_run."""
    return (
        f"sample --run {run_dir(run)} --sampling {run_dir(run)}/sampling.yaml"
        f" --out {run_dir(run)}/samples.npz"
    )


def sample_inputs(run):
    return {"model": f"{run_dir(run)}/model.pt", "sampling": f"{run_dir(run)}/sampling.yaml"}


if not S.evaluation.one_job_per_run:  # else evaluate_run (evaluate.smk) samples

    rule sample:
        input:
            unpack(lambda w: sample_inputs(w.run)),
        output:
            f"{R}/runs/{{run}}/samples.npz",
        params:
            command=lambda w: sample_command(w.run),
        log:
            f"{R}/logs/sample/{{run}}.log",
        threads: stage_threads("sample")
        resources:
            **stage_resources("sample"),
        shell:
            LOG_LINK + "OMP_NUM_THREADS={threads} diffobj {params.command}" + LOG
