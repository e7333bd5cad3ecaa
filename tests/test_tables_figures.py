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

    configs = tables.validate("study", study.configurations(evaluation_frame(), {}))
    fig = figures.weighting_study(configs, evaluation_frame())
    written = figures.save(fig, tmp_path / "study.png")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    text = study.markdown(configs, None, evaluation_frame().select("run_id"), {})
    assert "| masked | md4_cosine | edm † | tiny | 1 | 9 [9, 9] | 1.3 [1.3, 1.3] |" in text
    assert "simple better than edm (Shi & Titsias 2025, ImageNet 64 FID): **not resolved" in text


def test_sample_grid_tiles_images():
    images = np.zeros((16, 8, 8, 1), dtype=np.uint8)
    images[3] = 255
    tiled = figures._tile(images)
    assert tiled.shape == (4 * 9, 4 * 9)
    assert tiled[0:8, 27:35].min() == 255 and tiled[0:8, 0:8].max() == 0
