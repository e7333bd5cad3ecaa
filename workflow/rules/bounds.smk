# The cascade of improved bounds (Shi & Titsias), when the spec sets evaluation.bounds: true:
# one `diffobj bounds` per run on its training set, then one table and one figure.


def bounds_targets():
    if not S.evaluation.bounds:
        return []
    return [f"{R}/tables/bounds.parquet", f"{R}/figures/bounds.png"]


rule bounds:
    input:
        model=f"{R}/runs/{{run}}/model.pt",
        data=lambda w: data_file(dataset_of(w), IMAGES),
    output:
        f"{R}/runs/{{run}}/bounds.csv",
    params:
        out=lambda w: run_dir(w.run),
    log:
        f"{R}/logs/bounds/{{run}}.log",
    threads: stage_threads("nll")  # a likelihood job, like nll
    resources:
        **stage_resources("nll"),
    shell:
        LOG_LINK + "OMP_NUM_THREADS={threads} diffobj bounds --run {params.out} --data {input.data}"
        " --cuts {EVAL.bounds_cuts} --images {EVAL.bounds_images} --queries {EVAL.bounds_queries}"
        " --out {output}" + LOG


rule bounds_table:
    input:
        spec=SPEC,
        bounds=run_files("bounds.csv"),
    output:
        table=f"{R}/tables/bounds.parquet",
        figure=report(f"{R}/figures/bounds.png", caption="../report/bounds.rst", category="Figures"),
    log:
        f"{R}/logs/bounds_table.log",
    threads: stage_threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    shell:
        LOG_LINK + "diffobj bounds-table --spec {SPEC} --results {R} --table {output.table}"
        " --figure {output.figure}" + LOG
