# One rule per figure named in the spec; each reads validated tables (or run files) only.


def figure_inputs(name):
    t = f"{R}/tables"
    return {
        "weighting_study": [f"{t}/evaluation.parquet"]
        + ([f"{R}/features/{d}-test-fd.json" for d in sorted({r.dataset for r in LOADED.runs})] if EVAL.fd_classifier else []),
        "optimal_loss": [f"{R}/optimal/{d}-{p}.csv" for d, p in optimal_pairs()],
        "gap": [f"{t}/gap.parquet"],
        "gap_x0": [f"{t}/gap.parquet"],
        "gap_quality": [f"{t}/gap.parquet", f"{t}/evaluation.parquet"],
        "convergence": [f"{R}/optimal/{d}-{p}-convergence.csv" for d, p in gaussian_pairs()],
        "training_curves": [f"{t}/training_log.parquet", f"{t}/training.parquet"],
        "samples": run_files("samples.npz"),
        "scaling": [f"{t}/gap.parquet", f"{t}/training_log.parquet", f"{t}/runs.parquet"],
    }[name]


for _figure in [f for f in S.figures if f != "weightings"]:

    rule:
        name:
            f"figure_{_figure}"
        input:
            figure_inputs(_figure),
        output:
            report(
                f"{R}/figures/{_figure}.png",
                caption=f"../report/{_figure}.rst",
                category="Figures",
            ),
        params:
            figure=_figure,
        log:
            f"{R}/logs/figures/{_figure}.log",
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "diffobj figures --spec {SPEC} --results {R} --figure {params.figure} --out {output} > {log} 2>&1"
