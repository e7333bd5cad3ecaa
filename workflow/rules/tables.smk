rule weightings:
    input:
        SPEC,
    output:
        table=f"{R}/tables/weightings.parquet",
        figure=report(
            f"{R}/figures/weightings.png",
            caption="../report/weightings.rst",
            category="Weightings",
        ),
        pdf=f"{R}/figures/weightings.pdf",  # figures.save writes one beside the PNG
    log:
        f"{R}/logs/weightings.log",
    threads: stage_threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    shell:
        LOG_LINK + "diffobj weightings --spec {SPEC} --out {output.table} --figure {output.figure}" + LOG


rule tables:
    input:
        spec=SPEC,
        logs=run_files("train_log.csv"),
        bins=run_files("train_bins.csv"),
        eval_bins=run_files("eval_bins.csv"),
        evaluation=evaluation_files(),
        optimal=[optimal_table(d, p) for d, p in optimal_pairs()] if S.optimal_loss.enabled else [],
    output:
        [t for t in all_tables() if not t.endswith("weightings.parquet")],
    log:
        f"{R}/logs/tables.log",
    threads: stage_threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    shell:
        LOG_LINK + "diffobj tables --spec {SPEC} --results {R} --out-dir {R}/tables" + LOG
