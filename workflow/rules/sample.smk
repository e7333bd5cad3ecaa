from diffobj.sampling.samplers import SAMPLERS as SAMPLER_REGISTRY  # name -> function, options, flags

SAMPLING = S.sampling


def sampler_args(run):
    """--sampler and --steps of the run's process kind, then the flags its registered sampler
    (diffobj.sampling.samplers.SAMPLERS) takes from the spec; guidance where the run is conditional."""
    # classifier-free guidance of class-conditional runs (omitted at 0, the default)
    conditional = RUNS[run].model_cfg.get("num_classes", 0) > 0
    cfg = f" --guidance {SAMPLING.guidance}" if SAMPLING.guidance and conditional else ""
    process_kind = kind(RUNS[run].process)
    name = getattr(SAMPLING, f"{process_kind}_sampler")
    args = f"--sampler {name} --steps {getattr(SAMPLING, f'{process_kind}_steps')}"
    flags = SAMPLER_REGISTRY[name].spec_flags(SAMPLING, shell_path(LOADED.libraries["schedules"]))
    # the flags' order of the commands before the registry, so no job reruns
    return args + (flags + cfg if process_kind == "masked" else cfg + flags)


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
