from diffobj import processes

EVAL = S.evaluation


rule train_features:
    input:
        f"{R}/data/{{dataset}}/images.npy",
        f"{R}/data/{{dataset}}/test/images.npy",
    output:
        f"{R}/features/{{dataset}}.pt",
    params:
        data=lambda w: data_dir(w.dataset),
    log:
        f"{R}/logs/train_features/{{dataset}}.log",
    priority: 1
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        LOG_LINK + "diffobj train-features --data {params.data} --epochs {EVAL.features_epochs} --seed 0"
        " --out {output}" + LOG


rule fd_reference:
    input:
        images=f"{R}/data/{{dataset}}/images.npy",
        features=f"{R}/features/{{dataset}}.pt",
    output:
        f"{R}/features/{{dataset}}-ref.npz",
    log:
        f"{R}/logs/fd_reference/{{dataset}}.log",
    priority: 1
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        LOG_LINK + "diffobj fid-ref --data {input.images} --features {input.features} --out {output}" + LOG


def classifier_inputs(run):
    """The classifier FD's reference statistics and features of a run's dataset."""
    features = f"{R}/features/{RUNS[run].dataset}"
    return {"ref": f"{features}-ref.npz", "features": f"{features}.pt"}


def fd_classifier_command(run):
    """`diffobj fid` with the classifier features, of one run: shared with evaluate_run."""
    need = classifier_inputs(run)
    return (
        f"fid --samples {run_dir(run)}/samples.npz --ref {need['ref']}"
        f" --features {need['features']} --bootstrap {EVAL.bootstrap} --seed 0"
        f" --out {run_dir(run)}/fd_classifier.json"
    )


if not EVAL.one_job_per_run:

    rule fd_classifier:
        input:
            unpack(lambda w: classifier_inputs(w.run)),
            samples=f"{R}/runs/{{run}}/samples.npz",
        output:
            f"{R}/runs/{{run}}/fd_classifier.json",
        params:
            command=lambda w: fd_classifier_command(w.run),
        log:
            f"{R}/logs/fd_classifier/{{run}}.log",
        threads: stage_threads("classifier")
        resources:
            **stage_resources("classifier"),
        shell:
            LOG_LINK + "OMP_NUM_THREADS={threads} diffobj {params.command}" + LOG


rule fid_reference:
    input:
        f"{R}/data/{{dataset}}/images.npy",
    output:
        f"{R}/features/{{dataset}}-inception-ref.npz",
    params:
        weights=f"--inception {shell_path(LOADED.resolve(EVAL.inception_weights))}" if EVAL.inception_weights else "",
    log:
        f"{R}/logs/fid_reference/{{dataset}}.log",
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        LOG_LINK + "diffobj fid-ref --data {input} {params.weights} --out {output}" + LOG


rule fid:
    input:
        samples=f"{R}/runs/{{run}}/samples.npz",
        ref=lambda w: f"{R}/features/{dataset_of(w)}-inception-ref.npz",
    output:
        f"{R}/runs/{{run}}/fid.json",
    params:
        weights=f"--inception {shell_path(LOADED.resolve(EVAL.inception_weights))}" if EVAL.inception_weights else "",
    log:
        f"{R}/logs/fid/{{run}}.log",
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        LOG_LINK + "diffobj fid --samples {input.samples} --ref {input.ref} {params.weights} --out {output}" + LOG


def nll_inputs(run):
    """The trained model of a run and its dataset's held-out images."""
    return {"model": f"{run_dir(run)}/model.pt", "test": f"{data_dir(RUNS[run].dataset)}/test/images.npy"}


def nll_command(run):
    """`diffobj nll` of one run: shared with evaluate_run."""
    # the data grid (EDM's / VDM's) discretises continuous data; tokens have none
    continuous = processes.get(kind(RUNS[run].process)).continuous
    grid = f" --grid {EVAL.nll_grid}" if continuous else ""
    return (
        f"nll --run {run_dir(run)} --data {nll_inputs(run)['test']}"
        f" --samples-per-image {EVAL.nll_samples_per_image}"
        f" --time-sampling {EVAL.nll_time_sampling}{grid} --seed {RUNS[run].seed} --out {run_dir(run)}/nll.json"
    )


if not EVAL.one_job_per_run:

    rule nll:
        input:
            unpack(lambda w: nll_inputs(w.run)),
        output:
            f"{R}/runs/{{run}}/nll.json",
        params:
            command=lambda w: nll_command(w.run),
        log:
            f"{R}/logs/nll/{{run}}.log",
        threads: stage_threads("nll")
        resources:
            **stage_resources("nll"),
        shell:
            LOG_LINK + "OMP_NUM_THREADS={threads} diffobj {params.command}" + LOG


def evaluation_files():
    files = []
    if EVAL.fd_classifier:
        files += run_files("fd_classifier.json")
    if EVAL.fid:
        files += run_files("fid.json")
    if EVAL.nll:
        files += run_files("nll.json")
    return files


rule fd_real:
    """The classifier FD of held-out real images: the floor a perfect model would reach."""
    input:
        test=f"{R}/data/{{dataset}}/test/images.npy",
        ref=f"{R}/features/{{dataset}}-ref.npz",
        features=f"{R}/features/{{dataset}}.pt",
    output:
        f"{R}/features/{{dataset}}-test-fd.json",
    log:
        f"{R}/logs/fd_real/{{dataset}}.log",
    priority: 1
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        LOG_LINK + "diffobj fid --samples {input.test} --ref {input.ref} --features {input.features}"
        " --out {output}" + LOG


if EVAL.one_job_per_run:
    EVALUATE_RUN_STAGES = ("sample", "classifier", "nll")  # the stages it does, in one job

    def evaluate_run_inputs(wildcards):
        run = wildcards.run
        inputs = sample_inputs(run)
        inputs |= classifier_inputs(run) if EVAL.fd_classifier else {}
        inputs |= nll_inputs(run) if EVAL.nll else {}
        return inputs

    def evaluate_run_command(run):
        commands = [sample_command(run)]
        commands += [fd_classifier_command(run)] if EVAL.fd_classifier else []
        commands += [nll_command(run)] if EVAL.nll else []
        return " --then ".join(commands)

    rule evaluate_run:
        """sample, classifier FD and NLL of one run: the same three commands, one process."""
        input:
            unpack(evaluate_run_inputs),
        output:
            [f"{R}/runs/{{run}}/samples.npz"]
            + ([f"{R}/runs/{{run}}/fd_classifier.json"] if EVAL.fd_classifier else [])
            + ([f"{R}/runs/{{run}}/nll.json"] if EVAL.nll else []),
        params:
            command=lambda w: evaluate_run_command(w.run),
        log:
            f"{R}/logs/evaluate_run/{{run}}.log",
        threads: stage_threads(*EVALUATE_RUN_STAGES)
        resources:
            **stage_resources(*EVALUATE_RUN_STAGES),
        shell:
            LOG_LINK + "OMP_NUM_THREADS={threads} diffobj {params.command}" + LOG
