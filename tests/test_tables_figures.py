"""Tables refuse bad data (naming table, column and rows); figures draw from tables."""

import numpy as np
import polars as pl
import pytest

from diffobj import figures, tables
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
    from diffobj import study

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


def test_sample_grid_tiles_images():
    images = np.zeros((16, 8, 8, 1), dtype=np.uint8)
    images[3] = 255
    tiled = figures._tile(images)
    assert tiled.shape == (4 * 9, 4 * 9)
    assert tiled[0:8, 27:35].min() == 255 and tiled[0:8, 0:8].max() == 0


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
    fig = figures.training_density(training, tables.validate("runs", runs_table), bins_table)
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

    from diffobj.commands.figures import DRAW, FIGURES

    root = Path(__file__).resolve().parents[1]
    rules = (root / "workflow" / "rules" / "figures.smk").read_text()
    assert set(DRAW) == set(FIGURES)
    for name in FIGURES:
        assert f'"{name}": ' in rules, name
        assert (root / "workflow" / "report" / f"{name}.rst").stat().st_size > 0, name
