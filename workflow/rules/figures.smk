# One rule per figure named in the spec; each reads validated tables (or run files) only.

CAPTIONS = f"{workflow.basedir}/workflow/report"  # the figure captions, shared with snakemake --report


def figure_inputs(name):
    t = f"{R}/tables"
    return {
        "weighting_study": [f"{t}/evaluation.parquet", f"{t}/study.parquet", f"{t}/runs.parquet"]
        + ([f"{t}/gap.parquet"] if S.optimal_loss.enabled else [])
        + ([f"{R}/features/{d}-test-fd.json" for d in sorted({r.dataset for r in LOADED.runs})] if EVAL.fd_classifier else []),
        "optimal_loss": [f"{R}/optimal/{d}-{p}.csv" for d, p in optimal_pairs()],
        "gap": [f"{t}/gap.parquet"],
        "gap_x0": [f"{t}/gap.parquet"],
        "gap_quality": [f"{t}/gap.parquet", f"{t}/evaluation.parquet"],
        "convergence": [f"{R}/optimal/{d}-{p}-convergence.csv" for d, p in gaussian_pairs()],
        "training_curves": [f"{t}/training_log.parquet", f"{t}/training.parquet", f"{t}/runs.parquet"]
        + run_files("eval_bins.csv"),
        "training_density": [f"{t}/training.parquet", f"{t}/runs.parquet"],
        "samples": run_files("samples.npz")
        + [f"{t}/runs.parquet", f"{t}/evaluation.parquet"]
        + [f"{data_dir(d)}/test/images.npy" for d in sorted({r.dataset for r in LOADED.runs})]
        + ([f"{R}/features/{d}-test-fd.json" for d in sorted({r.dataset for r in LOADED.runs})] if EVAL.fd_classifier else []),
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
        threads: stage_threads("aggregate")
        resources:
            **stage_resources("aggregate"),
        shell:
            LOG_LINK + "diffobj figures --spec {SPEC} --results {R} --figure {params.figure} --out {output}" + LOG


rule report:
    """One self-contained HTML page: the generated study text and every figure with its caption."""
    input:
        all_figures(),
    output:
        f"{R}/report.html",
    log:
        f"{R}/logs/report.log",
    threads: stage_threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    shell:
        LOG_LINK + "diffobj report --spec {SPEC} --results {R} --captions {CAPTIONS}"
        " --out {output}" + LOG
