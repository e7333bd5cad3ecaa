SAMPLING = S.sampling


def sampler_args(wildcards):
    if kind(RUNS[wildcards.run].process) == "masked":
        return f"--sampler {SAMPLING.masked_sampler} --steps {SAMPLING.masked_steps}"
    return f"--sampler {SAMPLING.gaussian_sampler} --steps {SAMPLING.gaussian_steps}"


rule sample:
    input:
        f"{R}/runs/{{run}}/model.pt",
    output:
        f"{R}/runs/{{run}}/samples.npz",
    params:
        out=lambda w: run_dir(w.run),
        sampler=sampler_args,
    log:
        f"{R}/logs/sample/{{run}}.log",
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    shell:
        "OMP_NUM_THREADS={threads} diffobj sample --run {params.out} {params.sampler}"
        " --num {SAMPLING.num} --seed 0 --out {output} > {log} 2>&1"
