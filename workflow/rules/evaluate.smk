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
        "diffobj train-features --data {params.data} --epochs {EVAL.features_epochs} --seed 0"
        " --out {output} > {log} 2>&1"


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
        "diffobj fid-ref --data {input.images} --features {input.features} --out {output} > {log} 2>&1"


rule fd_classifier:
    input:
        samples=f"{R}/runs/{{run}}/samples.npz",
        ref=lambda w: f"{R}/features/{dataset_of(w)}-ref.npz",
        features=lambda w: f"{R}/features/{dataset_of(w)}.pt",
    output:
        f"{R}/runs/{{run}}/fd_classifier.json",
    log:
        f"{R}/logs/fd_classifier/{{run}}.log",
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    shell:
        "OMP_NUM_THREADS={threads} diffobj fid --samples {input.samples} --ref {input.ref}"
        " --features {input.features} --bootstrap {EVAL.bootstrap} --seed 0 --out {output} > {log} 2>&1"


rule fid_reference:
    input:
        f"{R}/data/{{dataset}}/images.npy",
    output:
        f"{R}/features/{{dataset}}-inception-ref.npz",
    params:
        weights=f"--inception {EVAL.inception_weights}" if EVAL.inception_weights else "",
    log:
        f"{R}/logs/fid_reference/{{dataset}}.log",
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        "diffobj fid-ref --data {input} {params.weights} --out {output} > {log} 2>&1"


rule fid:
    input:
        samples=f"{R}/runs/{{run}}/samples.npz",
        ref=lambda w: f"{R}/features/{dataset_of(w)}-inception-ref.npz",
    output:
        f"{R}/runs/{{run}}/fid.json",
    params:
        weights=f"--inception {EVAL.inception_weights}" if EVAL.inception_weights else "",
    log:
        f"{R}/logs/fid/{{run}}.log",
    threads: stage_threads("fid")
    resources:
        **stage_resources("fid"),
    shell:
        "diffobj fid --samples {input.samples} --ref {input.ref} {params.weights} --out {output} > {log} 2>&1"


rule nll:
    input:
        model=f"{R}/runs/{{run}}/model.pt",
        test=lambda w: f"{data_dir(dataset_of(w))}/test/images.npy",
    output:
        f"{R}/runs/{{run}}/nll.json",
    params:
        out=lambda w: run_dir(w.run),
        # VDM's data grid applies to the Gaussian bound only
        grid=lambda w: (
            f"--grid {EVAL.nll_grid}" if kind(RUNS[w.run].process) == "gaussian" else ""
        ),
    log:
        f"{R}/logs/nll/{{run}}.log",
    threads: stage_threads("nll")
    resources:
        **stage_resources("nll"),
    shell:
        "OMP_NUM_THREADS={threads} diffobj nll --run {params.out} --data {input.test}"
        " --samples-per-image {EVAL.nll_samples_per_image} --time-sampling {EVAL.nll_time_sampling}"
        " {params.grid} --seed 0 --out {output} > {log} 2>&1"


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
        "diffobj fid --samples {input.test} --ref {input.ref} --features {input.features}"
        " --out {output} > {log} 2>&1"
