SAMPLING = S.sampling


def masked_sampler_options():
    """MD4's options, only where the spec sets them (so default commands stay as they were)."""
    opts = ""
    if SAMPLING.masked_grid != "uniform":
        opts += f" --grid {SAMPLING.masked_grid}"
    if SAMPLING.masked_grid not in ("uniform", "cosine"):
        opts += f" --schedules-library {shell_path(LOADED.libraries['schedules'])}"
    if SAMPLING.masked_top_p is not None:
        opts += f" --top-p {SAMPLING.masked_top_p}"
    if SAMPLING.masked_final_argmax:
        opts += " --final-argmax"
    return opts


def sampler_args(run):
    # classifier-free guidance of class-conditional runs (omitted at 0, the default)
    conditional = RUNS[run].model_cfg.get("num_classes", 0) > 0
    cfg = f" --guidance {SAMPLING.guidance}" if SAMPLING.guidance and conditional else ""
    if kind(RUNS[run].process) == "masked":
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


def sample_command(run):
    """`diffobj sample` of one run (without the program name): shared with evaluate_run."""
    return (
        f"sample --run {run_dir(run)} {sampler_args(run)} --num {SAMPLING.num} --seed {RUNS[run].seed}"
        f" --out {run_dir(run)}/samples.npz"
    )


if not S.evaluation.one_job_per_run:  # else evaluate_run (evaluate.smk) samples

    rule sample:
        input:
            f"{R}/runs/{{run}}/model.pt",
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
