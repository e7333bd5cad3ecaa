from diffobj import processes

EVAL = S.evaluation


# The classifier and its FD references, one folder per features key (train-features' data,
# epochs and seed: diffobj.shared_paths.features_key) in results/shared/features/.


def features_output(file):
    return shared_output(FEATURES, file)


rule train_features:
    input:
        data_input(FEATURES, IMAGES),
        data_input(FEATURES, TEST_IMAGES),
    output:
        files=features_output(CLASSIFIER),
        key=features_output(KEY_FILE),
    params:
        data=data_input(FEATURES, ""),
        epochs=lambda w: shared_key(FEATURES, w.folder)["epochs"],
        seed=lambda w: shared_key(FEATURES, w.folder)["seed"],
        key=key_param(FEATURES),
    log:
        shared_log("train_features"),
    priority: 1
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        LOG_LINK + WRITE_KEY + "diffobj train-features --data {params.data} --epochs {params.epochs}"
        " --seed {params.seed} --out {output.files}" + LOG


rule fd_reference:
    input:
        images=data_input(FEATURES, IMAGES),
        features=features_output(CLASSIFIER),
    output:
        features_output(FD_REFERENCE),
    log:
        shared_log("fd_reference"),
    priority: 1
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        LOG_LINK + "diffobj fid-ref --data {input.images} --features {input.features} --out {output}" + LOG


def classifier_inputs(run):
    """The classifier FD's reference statistics and features of a run's dataset."""
    dataset = RUNS[run].dataset
    return {
        name: str(shared_paths.features_file(LOADED, dataset, file))
        for name, file in (("ref", FD_REFERENCE), ("features", CLASSIFIER))
    }


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
        data_input(INCEPTION, IMAGES),
    output:
        files=shared_output(INCEPTION, FD_REFERENCE),
        key=shared_output(INCEPTION, KEY_FILE),
    params:
        weights=lambda w: inception_option(shared_key(INCEPTION, w.folder)["weights"]),
        key=key_param(INCEPTION),
    log:
        shared_log("fid_reference"),
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        LOG_LINK + WRITE_KEY + "diffobj fid-ref --data {input} {params.weights} --out {output.files}" + LOG


def inception_option(weights):
    """--inception of the spec's weights file; none: the installed weights."""
    return f"--inception {shell_path(weights)}" if weights else ""


rule fid:
    input:
        samples=f"{R}/runs/{{run}}/samples.npz",
        ref=lambda w: str(shared_paths.inception_reference(LOADED, dataset_of(w))),
    output:
        f"{R}/runs/{{run}}/fid.json",
    params:
        weights=lambda w: inception_option(shared_paths.inception_key(LOADED, dataset_of(w))["weights"]),
    log:
        f"{R}/logs/fid/{{run}}.log",
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        LOG_LINK + "diffobj fid --samples {input.samples} --ref {input.ref} {params.weights} --out {output}" + LOG


def nll_inputs(run):
    """The trained model of a run and its dataset's held-out images."""
    return {"model": f"{run_dir(run)}/model.pt", "test": data_file(RUNS[run].dataset, TEST_IMAGES)}


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
        test=data_input(FEATURES, TEST_IMAGES),
        ref=features_output(FD_REFERENCE),
        features=features_output(CLASSIFIER),
    output:
        features_output(TEST_FD),
    log:
        shared_log("fd_real"),
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
