# One optimal-loss table per key (diffobj.shared_paths.optimal_key), and the estimator study
# (convergence_key), in results/shared/: the command's options are the key's fields.


def estimator_args(key):
    """optimal-loss's options of an optimal or convergence key, but --data and --out."""
    args = [
        f"--process {key['kind']}",
        f"--schedule {key['schedule']}",
        "--log-snr-range " + " ".join(str(v) for v in key["log_snr_range"]),
        f"--levels {key['levels']}",
        f"--queries {key['queries']}",
    ]
    if "estimator" in key:  # the convergence study runs every estimator
        args.append(f"--estimator {key['estimator']}")
    if key.get("subset"):
        args.append(f"--subset {key['subset']}")
    if key["device"] != "cpu":  # the command's default
        args.append(f"--device {key['device']}")
    return " ".join(args + [f"--seed {key['seed']}"])


rule optimal_loss:
    input:
        data_input(OPTIMAL, IMAGES),
    output:
        **shared_outputs(OPTIMAL),
    params:
        args=lambda w: estimator_args(shared_key(OPTIMAL, w.folder)),
        key=key_param(OPTIMAL),
    log:
        shared_log("optimal_loss"),
    # shared jobs first (also train_features, fd_reference): left to the end, on a few cores
    # they wait behind the trainings and then run as a serial tail before the tables
    priority: 1
    threads: stage_threads("optimal_loss")
    resources:
        **stage_resources("optimal_loss"),
    shell:
        LOG_LINK + WRITE_KEY + "diffobj optimal-loss --data {input} {params.args} --out {output.files}" + LOG


rule optimal_loss_convergence:
    input:
        data_input(CONVERGENCE, IMAGES),
    output:
        **shared_outputs(CONVERGENCE),
    params:
        args=lambda w: estimator_args(shared_key(CONVERGENCE, w.folder)),
        key=key_param(CONVERGENCE),
    log:
        shared_log("optimal_loss_convergence"),
    priority: 1
    threads: stage_threads("optimal_loss")
    resources:
        **stage_resources("optimal_loss"),
    shell:
        LOG_LINK + WRITE_KEY + "diffobj optimal-loss --convergence --data {input} {params.args}"
        " --out {output.files}" + LOG
