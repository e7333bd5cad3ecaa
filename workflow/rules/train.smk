# One training per run of the grid. The resolved run config is a param, so a run re-trains only
# when its own configuration changes (adding a weighting leaves the other runs untouched).

from diffobj.io import atomic_path
from diffobj.run_config import dump_run_config


rule run_config:
    output:
        f"{R}/runs/{{run}}/config.yaml",
    params:
        resolved=lambda w: json.dumps(RUNS[w.run].resolved(), sort_keys=True),
    localrule: True
    run:
        # in the Snakemake process, which holds the validated spec: no job start-up
        # (`diffobj validate SPEC --run-config RUN OUT` writes the same file by hand)
        with atomic_path(output[0]) as tmp:
            tmp.write_text(dump_run_config(RUNS[wildcards.run].resolved()))


from diffobj.optimal.curve import needs_optimal_loss


def train_inputs(wildcards):
    run = RUNS[wildcards.run]
    inputs = {"config": f"{run_dir(run.id)}/config.yaml", "data": data_file(run.dataset, IMAGES)}
    # only runs whose weighting reads Jstar or whose density uses the gap wait for the table
    if needs_optimal_loss({"name": run.weighting, **run.weighting_entry}, run.training_cfg):
        inputs["optimal"] = optimal_table(run.dataset, run.process)
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{R}/runs/{{run}}/model.pt",
        log=f"{R}/runs/{{run}}/train_log.csv",
        bins=f"{R}/runs/{{run}}/train_bins.csv",
        eval_bins=f"{R}/runs/{{run}}/eval_bins.csv",
        runtime=f"{R}/runs/{{run}}/runtime.json",
    params:
        out=lambda w: run_dir(w.run),
        optimal=lambda w, input: f"--optimal-loss {input.optimal}" if "optimal" in input.keys() else "",
    log:
        f"{R}/logs/train/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}.tsv"
    threads: stage_threads("train")
    resources:
        **stage_resources("train", resumable=True),
        # checkpoints on SIGUSR1 and exits 3: the submitit executor requeues it and it resumes
        resumable=1,
    shell:
        LOG_LINK + "OMP_NUM_THREADS={threads} diffobj train --run-config {input.config} --out {params.out}"
        " --threads {threads} --eval-images 128 --no-progress {params.optimal}" + LOG
