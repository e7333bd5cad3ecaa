def prepare_args(key):
    """prepare-data's options of a data key (diffobj.shared_paths.data_key)."""
    args = [f"--source {key['source']}", f"--name {key['name']}", f"--pad {key['pad']}"]
    if key["path"]:
        args.append(f"--path {shell_path(key['path'])}")  # resolved from the spec's base
    if key["resolution"]:
        args.append(f"--resolution {key['resolution']}")
    if key["test_fraction"] is not None:
        args.append(f"--test-fraction {key['test_fraction']}")
    return " ".join(args)


rule prepare_data:
    output:
        **shared_outputs(DATA),
    params:
        args=lambda w: prepare_args(shared_key(DATA, w.folder)),
        key=key_param(DATA),
        out=lambda w: str(shared_paths.path(DATA, w.folder, "")),
    log:
        shared_log("prepare_data"),
    threads: stage_threads("prepare_data")
    resources:
        **stage_resources("prepare_data"),
    shell:
        LOG_LINK + WRITE_KEY + "diffobj prepare-data {params.args} --out {params.out}" + LOG
