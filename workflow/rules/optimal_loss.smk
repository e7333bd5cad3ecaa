OPT = S.optimal_loss
# the estimator runs where the spec's resources.optimal_loss put it (the command's default: CPU)
OPT_DEVICE = " --device cuda" if S.resources.optimal_loss.gpus > 0 else ""


rule optimal_loss:
    input:
        f"{R}/data/{{dataset}}/images.npy",
    output:
        f"{R}/optimal/{{dataset}}-{{process}}.csv",
    params:
        kind=lambda w: kind(w.process),
        schedule=lambda w: optimal_schedule(w.process),
        lam=lambda w: " ".join(str(v) for v in S.processes[w.process].log_snr_range),
        subset=f"--subset {OPT.subset}" if OPT.subset else "",
    log:
        f"{R}/logs/optimal_loss/{{dataset}}-{{process}}.log",
    # shared jobs first (also train_features, fd_reference): left to the end, on a few cores
    # they wait behind the trainings and then run as a serial tail before the tables
    priority: 1
    threads: stage_threads("optimal_loss")
    resources:
        **stage_resources("optimal_loss"),
    shell:
        LOG_LINK + "diffobj optimal-loss --data {input} --process {params.kind} --schedule {params.schedule}"
        " --log-snr-range {params.lam} --levels {OPT.levels} --queries {OPT.queries}"
        " --estimator {OPT.estimator} {params.subset}{OPT_DEVICE} --seed 0 --out {output}" + LOG


rule optimal_loss_convergence:
    input:
        f"{R}/data/{{dataset}}/images.npy",
    output:
        f"{R}/optimal/{{dataset}}-{{process}}-convergence.csv",
    params:
        kind=lambda w: kind(w.process),
        schedule=lambda w: optimal_schedule(w.process),
        lam=lambda w: " ".join(str(v) for v in S.processes[w.process].log_snr_range),
    log:
        f"{R}/logs/optimal_loss/{{dataset}}-{{process}}-convergence.log",
    priority: 1
    threads: stage_threads("optimal_loss")
    resources:
        **stage_resources("optimal_loss"),
    shell:
        LOG_LINK + "diffobj optimal-loss --convergence --data {input} --process {params.kind}"
        " --schedule {params.schedule} --log-snr-range {params.lam} --levels 8"
        " --queries {OPT.queries}{OPT_DEVICE} --seed 0 --out {output}" + LOG
