def prepare_args(wildcards):
    d = S.datasets[wildcards.dataset]
    args = [f"--source {d.source}", f"--name {wildcards.dataset}", f"--pad {d.pad}"]
    if d.path:
        args.append(f"--path {shell_path(LOADED.resolve(d.path))}")  # from the spec's base
    if d.resolution:
        args.append(f"--resolution {d.resolution}")
    if d.source in ("sklearn_digits", "image_folder"):
        args.append(f"--test-fraction {d.test_fraction}")
    return " ".join(args)


rule prepare_data:
    output:
        images=f"{R}/data/{{dataset}}/images.npy",
        labels=f"{R}/data/{{dataset}}/labels.npy",
        meta=f"{R}/data/{{dataset}}/meta.json",
        test=f"{R}/data/{{dataset}}/test/images.npy",
    params:
        args=prepare_args,
        out=lambda w: data_dir(w.dataset),
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    threads: stage_threads("prepare_data")
    resources:
        **stage_resources("prepare_data"),
    shell:
        LOG_LINK + "diffobj prepare-data {params.args} --out {params.out}" + LOG
