SAMPLING = S.sampling


def masked_sampler_options():
    """MD4's options, only where the spec sets them (so default commands stay as they were)."""
    opts = ""
    if SAMPLING.masked_grid != "uniform":
        opts += f" --grid {SAMPLING.masked_grid}"
    if SAMPLING.masked_grid not in ("uniform", "cosine"):
        opts += f" --schedules-library {S.schedules_library}"
    if SAMPLING.masked_top_p is not None:
        opts += f" --top-p {SAMPLING.masked_top_p}"
    if SAMPLING.masked_final_argmax:
        opts += " --final-argmax"
    return opts


def sampler_args(wildcards):
    # classifier-free guidance of class-conditional runs (omitted at 0, the default)
    conditional = RUNS[wildcards.run].model_cfg.get("num_classes", 0) > 0
    cfg = f" --guidance {SAMPLING.guidance}" if SAMPLING.guidance and conditional else ""
    if kind(RUNS[wildcards.run].process) == "masked":
        return (
            f"--sampler {SAMPLING.masked_sampler} --steps {SAMPLING.masked_steps}"
            + masked_sampler_options()
            + cfg
        )
    args = f"--sampler {SAMPLING.gaussian_sampler} --steps {SAMPLING.gaussian_steps}{cfg}"
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
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    shell:
        "OMP_NUM_THREADS={threads} diffobj sample --run {params.out} {params.sampler}"
        " --num {SAMPLING.num} --seed 0 --out {output} > {log} 2>&1"
