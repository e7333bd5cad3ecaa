SAMPLING = S.sampling


def sampler_args(wildcards):
    # classifier-free guidance of class-conditional runs (omitted at 0, the default)
    conditional = RUNS[wildcards.run].model_cfg.get("num_classes", 0) > 0
    cfg = f" --guidance {SAMPLING.guidance}" if SAMPLING.guidance and conditional else ""
    if kind(RUNS[wildcards.run].process) == "masked":
        return f"--sampler {SAMPLING.masked_sampler} --steps {SAMPLING.masked_steps}{cfg}"
    return f"--sampler {SAMPLING.gaussian_sampler} --steps {SAMPLING.gaussian_steps}{cfg}"


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
