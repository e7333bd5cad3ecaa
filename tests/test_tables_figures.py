"""Tables refuse bad data (naming table, column and rows); figures draw from tables."""

import numpy as np
import polars as pl
import pytest

from diffobj.analysis import figures, figures_samples, figures_training, tables
from diffobj.errors import UserError


def evaluation_frame():
    return pl.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "process": ["gaussian", "gaussian", "masked", "masked"],
            "kind": ["gaussian", "gaussian", "masked", "masked"],
            "schedule": ["vp_cosine"] * 2 + ["md4_cosine"] * 2,
            "weighting": ["elbo", "iddpm", "simple", "edm"],
            "model": ["tiny"] * 4,
            "seed": [0] * 4,
            "monotonic": [True, False, True, False],
            "fd_classifier": [3.0, 5.0, 2.0, 9.0],
            "fd_classifier_lo": [2.5, 4.0, 1.5, 8.0],
            "fd_classifier_hi": [3.5, 6.0, 2.5, 10.0],
            "fid": [None] * 4,
            "nll_bpd": [1.2, 1.4, 1.1, 1.3],
            "nll_stderr": [0.01] * 4,
        },
        schema_overrides={"fid": pl.Float64},
    )


def test_schema_failure_names_table_column_and_rows(tmp_path):
    frame = evaluation_frame().with_columns(pl.Series("fd_classifier", [3.0, -1.0, 2.0, 9.0]))
    out = tmp_path / "evaluation.parquet"
    with pytest.raises(UserError) as err:
        tables.write("evaluation", frame, out)
    message = str(err.value)
    assert (
        "table 'evaluation'" in message and "'fd_classifier'" in message and "rows [1]" in message
    )
    assert not out.exists()


def test_valid_table_round_trips(tmp_path):
    out = tmp_path / "evaluation.parquet"
    tables.write("evaluation", evaluation_frame(), out)
    assert tables.read("evaluation", out).equals(evaluation_frame())


def test_power_law_fit_recovers_a_known_exponent():
    x = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    fit = figures.fit_power_law(x, 3.0 * x**-0.25)
    assert fit["alpha"] == pytest.approx(-0.25, abs=1e-12)
    assert fit["beta"] == pytest.approx(3.0, rel=1e-10)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = figures.fit_power_law(x, 3.0 * x**-0.25 * np.exp([0.01, -0.02, 0.015, -0.01, 0.005]))
    assert noisy["alpha_lo"] < -0.25 < noisy["alpha_hi"]


def test_subtracting_the_optimal_loss_reveals_the_power_law():
    # L(N) = J* + b N^a: the raw fit is not a power law, L - J* is exactly one
    n = np.geomspace(1e4, 1e7, 6)
    loss = 0.5 + 2.0 * n**-0.3
    assert figures.fit_power_law(n, loss - 0.5)["r2"] == pytest.approx(1.0)
    assert figures.fit_power_law(n, loss)["alpha"] > -0.3 / 2
    points = pl.DataFrame(
        {
            "run_id": [str(i) for i in range(6)],
            "kind": ["gaussian"] * 6,
            "n_params": n,
            "loss": loss,
            "optimal_loss": [0.5] * 6,
        }
    )
    assert figures.scaling(points).axes


def test_figures_draw_and_save_png_and_pdf(tmp_path):
    from diffobj.analysis import study

    configs = tables.validate("study", study.configurations(evaluation_frame()))
    fig = figures.weighting_study(configs, evaluation_frame())
    written = figures.save(fig, tmp_path / "study.png")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    evaluation = evaluation_frame()
    text = study.markdown(configs, evaluation, None, evaluation.select("run_id"), {})
    assert "| masked | md4_cosine | edm † | tiny | 1 | 9 | 1.3 |" in text  # one seed: no interval
    assert "masked: simple < edm (md4_cosine, tiny) | Shi & Titsias 2025" in text
    assert "**not resolved (fewer than 2 shared seeds)** |" in text


def test_sample_tiles_put_images_side_by_side():
    images = np.zeros((16, 8, 8, 1), dtype=np.uint8)
    images[3] = 255
    tiled = figures_samples.tile(images)
    assert tiled.shape == (4 * 9, 4 * 9)
    assert tiled[0:8, 27:35].min() == 255 and tiled[0:8, 0:8].max() == 0
    assert figures_samples.tile(images, cols=8).shape == (2 * 9, 8 * 9)  # a row's seed block


def test_training_density_plots_the_drawn_log_snr_density():
    """Counts drawn from a known density per bin, plotted back as that density (count / total /
    bin width), first-half windows left out, bins with no draws at 0, one line per config."""
    known = {  # per (process, weighting): density per unit lam on its bins
        ("fm", "fm"): np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05]),  # width 1 on [-4, 4]
        ("fm", "xu_optimal"): np.array([0.0, 0.0, 0.05, 0.05, 0.1, 0.4, 0.3, 0.1]),
        ("edm", "edm"): np.array([0.05, 0.1, 0.2, 0.15]),  # width 2 on [-4, 4]
    }
    runs, rows, bins = [], [], []
    for (process, weighting), p in known.items():
        k = len(p)
        width = 8 / k
        centres = -4 + width * (np.arange(k) + 0.5)
        for seed in (0, 1):
            run = f"{process}-{weighting}-s{seed}"
            runs.append((run, process, weighting, seed))
            density = "optimal_loss_schedule" if weighting == "xu_optimal" else "schedule"
            bins.append((run, density, -4.0, 4.0, k))
            for step in range(10, 101, 10):
                # first half: uniform draws (must be ignored); second half: the known density
                counts = np.full(k, 7) if step <= 50 else np.rint(p * width * 1000).astype(int)
                rows += [
                    (run, step, float(c), 0.1, int(n))
                    for c, n in zip(centres, counts, strict=True)
                    if n > 0  # the training table holds only bins with draws
                ]
    training = tables.validate(
        "training",
        pl.DataFrame(rows, schema=["run_id", "step", "log_snr", "error", "count"], orient="row"),
    )
    runs_table = pl.DataFrame(
        [
            {
                "run_id": run,
                "dataset": "digits",
                "process": process,
                "kind": "gaussian",
                "schedule": "vp_cosine",
                "weighting": weighting,
                "model": "tiny",
                "seed": seed,
                "monotonic": True,
            }
            for run, process, weighting, seed in runs
        ]
    )
    bins_table = pl.DataFrame(
        bins,
        schema=["run_id", "density", "log_snr_min", "log_snr_max", "log_snr_bins"],
        orient="row",
    )
    fig = figures_training.training_density(
        training, tables.validate("runs", runs_table), bins_table
    )
    by_title = {ax.get_title().split(" ")[0]: ax for ax in fig.axes}
    assert set(by_title) == {"fm", "edm"}
    for process in ("fm", "edm"):
        ax = by_title[process]
        expected = [p for (proc, _), p in known.items() if proc == process]
        k = len(expected[0])
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == k]
        assert len(lines) == len(expected)
        for line in lines:
            y = np.asarray(line.get_ydata(), float)
            assert any(np.allclose(y, p) for p in expected), (process, y)
        np.testing.assert_allclose(lines[0].get_xdata(), -4 + (8 / k) * (np.arange(k) + 0.5))
        assert ax.get_xlabel() == "log-SNR λ" and "per unit λ" in ax.get_ylabel()
    # the optimal-loss schedule's runs are told apart from the plain ones by their density
    legend = [t.get_text() for t in by_title["fm"].get_legend().get_texts()]
    assert "xu_optimal / optimal_loss_schedule" in legend and "fm / schedule" in legend


def test_training_density_reads_each_runs_density_and_bins_from_the_spec():
    from pathlib import Path

    from diffobj import spec
    from diffobj.commands.figures import FIGURES, density_bins

    root = Path(__file__).resolve().parents[1]
    loaded = spec.load(root / "config" / "experiments" / "optimal_loss_schedule.yaml", root)
    assert "training_density" in loaded.spec.figures and "training_density" in FIGURES
    bins = density_bins(loaded)
    xu = bins["run_id"].str.contains("xu_optimal")
    assert (bins.filter(xu)["density"] == "optimal_loss_schedule").all()
    assert (bins.filter(~xu)["density"] == "schedule").all() and len(bins) == 8
    assert bins.select("log_snr_min", "log_snr_max", "log_snr_bins").unique().rows() == [
        (-10.0, 13.0, 16)
    ]


def test_every_figure_has_a_drawer_rule_inputs_and_a_caption():
    from pathlib import Path

    from diffobj.commands.figures import FIGURES

    root = Path(__file__).resolve().parents[1]
    rules = (root / "workflow" / "rules" / "figures.smk").read_text()
    assert "FIGURE_REGISTRY[_figure]" in rules  # the rules are made from the registry
    for name, entry in FIGURES.items():
        assert (root / "workflow" / "report" / entry.caption_file).stat().st_size > 0, name
        if entry.fn is None:  # weightings: drawn with its table
            continue
        outputs = entry.outputs("R")
        assert outputs[:2] == [f"R/figures/{name}.png", f"R/figures/{name}.pdf"], name


def test_every_file_a_figure_writes_is_declared():
    """The side files a figure's drawer writes are the ones its registry entry declares (so
    Snakemake knows them): the drawers name them from ``out`` as the registry does."""
    import inspect

    from diffobj.commands import figures

    for name, entry in figures.FIGURES.items():
        if entry.fn is None:
            continue
        source = inspect.getsource(entry.fn)
        writes = source.count("atomic_path(")
        assert writes == len(entry.side_files), (name, entry.side_files)


def runs_of(*runs):
    """A runs table from (run_id, process, kind, schedule, weighting, seed) tuples."""
    return tables.validate(
        "runs",
        pl.DataFrame(
            [
                {
                    "run_id": run,
                    "dataset": "digits",
                    "process": process,
                    "kind": kind,
                    "schedule": schedule,
                    "weighting": weighting,
                    "model": "tiny",
                    "seed": seed,
                    "monotonic": True,
                }
                for run, process, kind, schedule, weighting, seed in runs
            ]
        ),
    )


def test_training_curves_plot_the_elbo_term_of_the_unweighted_error_against_images_seen():
    """Two weightings whose optimised losses differ 10⁴-fold but whose unweighted errors are
    alike draw the same curve: Σ_bins ELBO weight · error · width (½ for the Gaussian ε-MSE,
    sigmoid(λ) for the masked CE), over the bins every run drew in at least half its windows;
    a window that missed such a bin takes the run's error interpolated between its neighbours."""
    centres, width, steps = np.array([-3.0, -1.0, 1.0, 3.0]), 2.0, [10, 20, 30]

    def error(k, step, scale=1.0):  # linear in step, so interpolating a missed window is exact
        return scale * (k + 1) * (40 - step) / 100

    plan = {  # run -> (process, kind, weighting, seed, error scale, its weighted loss)
        "g-elbo-s0": ("gauss", "gaussian", "elbo", 0, 1.0, 100.0),
        "g-elbo-s1": ("gauss", "gaussian", "elbo", 1, 2.0, 200.0),
        "g-edm-s0": ("gauss", "gaussian", "edm", 0, 1.0, 0.01),
        "m-simple-s0": ("mask", "masked", "simple", 0, 1.0, 3.0),
    }
    rows, log = [], []
    for run, (_, kind, _, _, scale, loss) in plan.items():
        for step in steps:
            log.append((run, step, step * 64, loss, 1.0, 1e-3, 100.0, 0.0))
            for k, lam in enumerate(centres):
                if run == "g-elbo-s0" and k == 0 and step > 10:
                    continue  # λ = -3 drawn in 1 of 3 windows: left out for every Gaussian run
                if run == "g-edm-s0" and k == 3 and step == 20:
                    continue  # one missed window: interpolated
                e = 1.0 if kind == "masked" else error(k, step, scale)
                rows.append((run, step, float(lam), e, 5))
    training = tables.validate(
        "training",
        pl.DataFrame(rows, schema=["run_id", "step", "log_snr", "error", "count"], orient="row"),
    )
    training_log = tables.validate(
        "training_log",
        pl.DataFrame(
            log,
            schema=[
                "run_id",
                "step",
                "images_seen",
                "loss",
                "grad_norm",
                "lr",
                "images_per_s",
                "peak_mem_mb",
            ],
            orient="row",
        ),
    )
    runs = runs_of(*((r, p, k, "sched", w, s) for r, (p, k, w, s, _, _) in plan.items()))
    bins = pl.DataFrame(
        {
            "run_id": list(plan),
            "density": "schedule",
            "log_snr_min": -4.0,
            "log_snr_max": 4.0,
            "log_snr_bins": 4,
        }
    )
    final = pl.DataFrame(  # the EMA model's error at each bin centre: 0.1 everywhere
        {
            "run_id": np.repeat(list(plan), 4),
            "log_snr": np.tile(centres, len(plan)),
            "error": 0.1,
        }
    )
    fig = figures_training.training_curves(training, training_log, runs, bins, final)
    gauss, mask = fig.axes

    def curve(ax, label):
        (line,) = [line for line in ax.get_lines() if line.get_label() == label]
        return np.asarray(line.get_xdata()), np.asarray(line.get_ydata())

    # ½ · width · Σ error over λ = -1, 1, 3; elbo: the mean of seeds at scale 1 and 2
    expected = np.array([0.5 * width * sum(error(k, s) for k in (1, 2, 3)) for s in steps])
    x, y = curve(gauss, "elbo")
    np.testing.assert_allclose(x, np.array(steps) * 64)
    np.testing.assert_allclose(y, 1.5 * expected)
    np.testing.assert_allclose(curve(gauss, "edm")[1], expected)
    sigmoid = 1 / (1 + np.exp(-centres))
    np.testing.assert_allclose(curve(mask, "simple")[1], width * sigmoid.sum())
    assert gauss.get_xlabel() == "training images seen"
    assert "ε-MSE" in gauss.get_ylabel() and "nats / dim" in gauss.get_ylabel()
    assert "sigmoid(λ)·CE" in mask.get_ylabel()
    assert any("3 of 4 bins" in t.get_text() for t in gauss.texts)
    # the EMA model's diamond, over the same bins: ½ · 2 · 0.1 · 3
    diamonds = [
        line for line in gauss.get_lines() if line.get_marker() == "D" and len(line.get_ydata())
    ]
    np.testing.assert_allclose([d.get_ydata()[0] for d in diamonds], [0.3, 0.3])


def test_samples_have_a_real_row_then_one_row_per_configuration_with_scores():
    runs = runs_of(
        ("g-elbo-s0", "gaussian", "gaussian", "vp", "elbo", 0),
        ("g-elbo-s1", "gaussian", "gaussian", "vp", "elbo", 1),
        ("g-edm-s1", "gaussian", "gaussian", "vp", "edm", 1),
        ("g-edm-s0", "gaussian", "gaussian", "vp", "edm", 0),
        ("m-simple-s0", "masked", "masked", "md4", "simple", 0),
    )
    shade = {run: 40 * (i + 1) for i, run in enumerate(runs["run_id"])}  # a grey per run
    images = {run: np.full((6, 8, 8, 1), v, np.uint8) for run, v in shade.items()}
    real = {"digits": np.full((20, 8, 8, 1), 7, np.uint8)}
    evaluation = runs.select("run_id").with_columns(
        pl.Series("fd_classifier", [3.0, 5.0, 9.0, 11.0, 2.0]),
        pl.lit(None, pl.Float64).alias("fid"),
    )
    fig = figures_samples.samples(
        images, runs, real, evaluation, fd_real={"digits": 1.5}, per_seed=4
    )
    rows = fig.axes
    assert len(rows) == 1 + 3  # real images, then elbo, edm, simple
    texts = [{t.get_text() for t in ax.texts} for ax in rows]
    assert "digits: real (held out)" in texts[0]
    assert any("1.5" in t for t in texts[0])  # the real images' own classifier FD, the floor
    assert set(np.unique(rows[0].get_images()[0].get_array())) == {7, 255}
    for ax, (label, seeds, mean) in zip(
        rows[1:],
        [
            ("gaussian · vp · elbo · tiny", ["g-elbo-s0", "g-elbo-s1"], "mean 4 over 2 seeds"),
            ("gaussian · vp · edm · tiny", ["g-edm-s0", "g-edm-s1"], "mean 10 over 2 seeds"),
            ("masked · md4 · simple · tiny", ["m-simple-s0"], "mean 2 over 1 seed"),
        ],
        strict=True,
    ):
        text = {t.get_text() for t in ax.texts}
        assert label in text and any(mean in t for t in text), text
        # the seeds side by side, in seed order: each block is that run's samples
        pixels = np.asarray(ax.get_images()[0].get_array())
        shades = [v for v in dict.fromkeys(pixels[0].tolist()) if v != 255]
        assert shades == [shade[run] for run in seeds]
    # each seed its own score: g-edm-s1 scored 9, g-edm-s0 11
    assert {"seed 0: classifier FD 11", "seed 1: classifier FD 9"} <= {
        t.get_text() for t in rows[2].texts
    }
    assert fig.get_size_inches()[1] <= 1.0 * len(rows)  # about an inch a row, not 3,000 px


def test_samples_score_is_fid_where_the_evaluation_computed_it():
    runs = runs_of(("a", "gaussian", "gaussian", "vp", "elbo", 0))
    evaluation = pl.DataFrame({"run_id": ["a"], "fd_classifier": [3.0], "fid": [12.5]})
    (_, row) = figures_samples.sample_rows(runs, evaluation)
    assert row["runs"] == [(0, "a", 12.5)] and row["mean"] == 12.5


def test_gap_figure_keeps_the_optimal_loss_on_the_axis_where_it_is_zero():
    from diffobj.analysis.gather import with_x0_scale

    lam = np.linspace(-6, 6, 7)
    optimal = np.array([0.5, 0.3, 0.1, 0.01, 0.0, 0.0, 0.0])  # memorised at low noise
    table = with_x0_scale(
        pl.DataFrame(
            {
                "run_id": "r",
                "kind": "gaussian",
                "schedule": "vp",
                "weighting": "elbo",
                "log_snr": lam,
                "model_loss": optimal + 0.02,
                "model_stderr": 0.001,
                "optimal_loss": optimal,
            }
        ).with_columns((pl.col("model_loss") - pl.col("optimal_loss")).alias("gap"))
    )
    for scale in ("eps", "x0"):
        top = figures.gap(table, scale=scale).axes[0]
        (line,) = [line for line in top.get_lines() if line.get_label() == "optimal loss"]
        points = np.column_stack([line.get_xdata(), line.get_ydata()])
        assert len(points) == len(lam) and (points[:, 1] == 0).sum() == 3
        # every point, zeros included, maps to a finite place inside the axes' limits
        assert np.isfinite(top.transData.transform(points)).all()
        low, high = top.get_ylim()
        assert low <= points[:, 1].min() and points[:, 1].max() <= high
        assert top.get_yscale() == "symlog" and "linear below" in top.get_ylabel()


def test_report_lists_the_orderings_and_wraps_the_provenance(tmp_path):
    from diffobj.analysis import report, study

    evaluation = evaluation_frame()
    configs = tables.validate("study", study.configurations(evaluation))
    provenance = {"jobs": {"train": ["cpu: X, 1 thread(s), torch 2"] * 1}, "spec": "s" * 300}
    text = study.markdown(configs, evaluation, None, evaluation.select("run_id"), provenance)
    (tmp_path / "weighting_study.md").write_text(text)
    figures.save(plt_figure(), tmp_path / "gap.png")
    (tmp_path / "gap.rst").write_text("A caption with ``code``.")
    page = report.build("t", tmp_path / "weighting_study.md", [tmp_path / "gap.png"], tmp_path)
    # each metric's pairs are a list under their line, not run into it
    assert "differ:</p>\n<ul>\n<li>none</li>" in page
    assert "white-space: pre-wrap" in page and "overflow-x: auto" not in page
    assert "jobs:\n  train: cpu: X, 1 thread(s), torch 2\n" in page  # one line per stage
    assert "<code>code</code>" in page and "``" not in page


def plt_figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


def test_training_curves_say_so_when_no_bin_was_drawn_often_enough():
    # four windows, each drawing a different one of the four bins: none in half the windows
    rows = [("r", step, -3.0 + 2 * k, 0.5, 1) for k, step in enumerate([1, 2, 3, 4])]
    training = pl.DataFrame(
        rows, schema=["run_id", "step", "log_snr", "error", "count"], orient="row"
    )
    log = pl.DataFrame({"run_id": "r", "step": [1, 2, 3, 4], "images_seen": [8, 16, 24, 32]})
    bins = pl.DataFrame(
        {
            "run_id": ["r"],
            "density": "schedule",
            "log_snr_min": -4.0,
            "log_snr_max": 4.0,
            "log_snr_bins": 4,
        }
    )
    fig = figures_training.training_curves(
        training, log, runs_of(("r", "gaussian", "gaussian", "vp", "elbo", 0)), bins
    )
    (ax,) = fig.axes
    assert any(t.get_text().startswith("no log-SNR bin was drawn") for t in ax.texts)
