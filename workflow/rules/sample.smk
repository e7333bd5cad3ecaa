SAMPLING = S.sampling


def sampler_args(wildcards):
    if kind(RUNS[wildcards.run].process) == "masked":
        return f"--sampler {SAMPLING.masked_sampler} --steps {SAMPLING.masked_steps}"
    args = f"--sampler {SAMPLING.gaussian_sampler} --steps {SAMPLING.gaussian_steps}"
    if SAMPLING.gaussian_sampler == "heun":  # EDM's sigma range and churn (spec: sampling)
        args += f" --sigma-min {SAMPLING.sigma_min} --sigma-max {SAMPLING.sigma_max}"
        if SAMPLING.s_churn > 0:
            args += f" --s-churn {SAMPLING.s_churn} --s-min {SAMPLING.s_min} --s-noise {SAMPLING.s_noise}"
            args += f" --s-max {SAMPLING.s_max}" if SAMPLING.s_max is not None else ""
    return args


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
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} diffobj sample --run {params.out} {params.sampler}"
        " --num {SAMPLING.num} --seed 0 --out {output} > {log} 2>&1"
