# One rule per figure named in the spec; each reads validated tables (or run files) only.

CAPTIONS = f"{workflow.basedir}/workflow/report"  # the figure captions, shared with snakemake --report


from diffobj.commands.figures import FIGURES as FIGURE_REGISTRY  # name -> inputs, outputs, caption


def figure_outputs():
    """Every file the spec's figure rules write (PNG, PDF and side files such as the study text)."""
    return [path for name in S.figures if FIGURE_REGISTRY[name].fn for path in FIGURE_REGISTRY[name].outputs(R)]


for _figure in [f for f in S.figures if FIGURE_REGISTRY[f].fn]:  # weightings: tables.smk
    _entry = FIGURE_REGISTRY[_figure]

    rule:
        name:
            f"figure_{_figure}"
        input:
            _entry.inputs(LOADED, R),
        output:
            png=report(
                _entry.outputs(R)[0],
                caption=f"../report/{_entry.caption_file}",
                category="Figures",
            ),
            written=_entry.outputs(R)[1:],
        params:
            figure=_figure,
        log:
            f"{R}/logs/figures/{_figure}.log",
        threads: stage_threads("aggregate")
        resources:
            **stage_resources("aggregate"),
        shell:
            LOG_LINK + "diffobj figures --spec {SPEC} --results {R} --figure {params.figure} --out {output.png}" + LOG


rule report:
    """One self-contained HTML page: the generated study text and every figure with its caption."""
    input:
        all_figures(),
        figure_outputs(),  # weighting_study.md among them: the page's text
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
