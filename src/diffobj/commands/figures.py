"""diffobj figures: draw one figure of an experiment from its validated tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from diffobj import shared_paths
from diffobj.registry import Registry
from diffobj.shared_paths import root_of


@dataclass(frozen=True)
class Figure:
    """A figure of the spec's ``figures:`` list. ``fn(loaded, results, out)`` draws it (and
    writes its ``side_files``) and returns the matplotlib figure, saved as ``out`` (PNG) and a
    PDF beside it; None: another rule draws it (``weightings``: tables.smk). ``inputs(loaded,
    R)``: the files it reads, R the results folder as the Snakefile names it. ``side_files``:
    what else it writes into figures/, so the workflow declares every file. ``caption``: its
    caption in workflow/report (Snakemake's report and ``diffobj report`` read it)."""

    name: str
    fn: Callable[[Any, Path, Path], Any] | None
    inputs: Callable[[Any, str], list[str]] = lambda loaded, results: []
    side_files: tuple[str, ...] = ()
    caption: str = ""

    def outputs(self, results: str) -> list[str]:
        """Every file it writes: the PNG first, then the PDF and the side files."""
        names = [f"{self.name}.png", f"{self.name}.pdf", *self.side_files]
        return [f"{results}/figures/{n}" for n in names]

    @property
    def caption_file(self) -> str:
        return self.caption or f"{self.name}.rst"


FIGURES: Registry[Figure] = Registry("figure")
figure = partial(FIGURES.decorator, Figure)  # @figure(name, inputs=..., side_files=...)

FIGURES.add("weightings", Figure("weightings", None))  # drawn with its table (tables.smk)


def _datasets(loaded) -> list[str]:
    return sorted({r.dataset for r in loaded.runs})


def _fd_paths(loaded, results: str | Path) -> dict[str, Path]:
    """Per dataset, its held-out classifier FD, where the evaluation computes them."""
    if not loaded.spec.evaluation.fd_classifier:
        return {}
    root = root_of(results)
    return {
        d: shared_paths.features_file(loaded, d, shared_paths.TEST_FD, root)
        for d in _datasets(loaded)
    }


def _fd_files(loaded, results: str) -> list[str]:
    return [str(path) for path in _fd_paths(loaded, results).values()]


def _run_files(loaded, results: str, name: str) -> list[str]:
    return [f"{results}/runs/{r.id}/{name}" for r in loaded.runs]


def _pairs(loaded, kinds: Collection[str] | None = None) -> list[tuple[str, str]]:
    """(dataset, process) of the grid's runs (only those of process ``kinds``), sorted."""
    pairs = sorted({(r.dataset, r.process) for r in loaded.runs})
    return [(d, p) for d, p in pairs if kinds is None or loaded.spec.processes[p].kind in kinds]


def _study_pairs(loaded) -> list[tuple[str, str]]:
    """The pairs whose process the estimator study is for (diffobj.optimal.estimators.study_kinds)."""
    from diffobj.optimal.estimators import (
        study_kinds,  # torch: imported when the inputs are asked for
    )

    return _pairs(loaded, study_kinds())


def _tables(results: str, *names: str) -> list[str]:
    return [f"{results}/tables/{n}.parquet" for n in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--results", required=True, help="results/<experiment>")
    parser.add_argument(
        "--figure",
        required=True,
        choices=FIGURES.names(lambda f: f.fn is not None),
        help="which figure",
    )
    parser.add_argument("--out", required=True, help="PNG path (a PDF is written beside it)")


def run(args: argparse.Namespace) -> None:
    from diffobj import spec
    from diffobj.analysis import figures

    loaded = spec.load(args.spec)
    results = Path(args.results)
    fig = FIGURES[args.figure].fn(loaded, results, Path(args.out))
    figures.save(fig, args.out)


def _table(results: Path, name: str):
    from diffobj.analysis import tables

    return tables.read(name, results / "tables" / f"{name}.parquet")


@figure(
    "weighting_study",
    inputs=lambda loaded, r: (
        _tables(r, "evaluation", "study", "runs")
        + (_tables(r, "gap") if loaded.spec.optimal_loss.enabled else [])
        + _fd_files(loaded, r)
    ),
    side_files=("weighting_study.md",),  # the study text, read by diffobj report
)
def _weighting_study(loaded, results, out):
    from diffobj.analysis import figures, study, tables
    from diffobj.io import atomic_path

    evaluation, configs = _table(results, "evaluation"), _table(results, "study")
    baselines = fd_real_baselines(loaded, results)
    gap_path = results / "tables" / "gap.parquet"
    gaps = study.elbo_gap(tables.read("gap", gap_path)) if gap_path.exists() else None
    text = study.markdown(
        configs,
        evaluation,
        gaps,
        _table(results, "runs"),
        tables.read_provenance(results / "tables" / "study.parquet") or {},
        baselines,
    )
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    return figures.weighting_study(configs, evaluation, baselines)


def fd_real_baselines(loaded, results: Path) -> dict[str, float]:
    """The classifier FD of held-out real images per dataset (the metric's floor), where the
    evaluation computed it."""
    return {
        dataset: json.loads(path.read_text())["fd_classifier"]
        for dataset, path in _fd_paths(loaded, results).items()
        if path.exists()
    }


@figure(
    "optimal_loss",
    inputs=lambda loaded, r: [
        str(shared_paths.optimal_table(loaded, d, p, root_of(r))) for d, p in _pairs(loaded)
    ],
)
def _optimal_loss(loaded, results, out):
    import polars as pl

    from diffobj.analysis.figures_optimal import optimal_loss_figure

    # the raw estimator files: they also hold the x0-scale loss and the VE noise scale
    frames = {}
    for dataset, process in _pairs(loaded):
        frame = pl.read_csv(shared_paths.optimal_table(loaded, dataset, process, root_of(results)))
        frames[dataset] = (
            pl.concat([frames[dataset], frame], how="vertical_relaxed")
            if dataset in frames
            else frame
        )
    return optimal_loss_figure(frames)


@figure(
    "convergence",
    inputs=lambda loaded, r: [str(p) for p in _convergence_tables(loaded, root_of(r))],
)
def _convergence(loaded, results, out):
    import polars as pl

    from diffobj.analysis.figures_optimal import convergence_figure

    paths = _convergence_tables(loaded, root_of(results))
    return convergence_figure(pl.concat([pl.read_csv(p) for p in paths], how="vertical_relaxed"))


def _convergence_tables(loaded, root: Path) -> list[Path]:
    """The estimator study of each pair whose process it is for."""
    return [shared_paths.convergence_table(loaded, d, p, root) for d, p in _study_pairs(loaded)]


@figure("gap", inputs=lambda loaded, r: _tables(r, "gap"))
def _gap(loaded, results, out):
    from diffobj.analysis import figures

    return figures.gap(_table(results, "gap"))


@figure("gap_x0", inputs=lambda loaded, r: _tables(r, "gap"))
def _gap_x0(loaded, results, out):
    from diffobj.analysis import figures

    return figures.gap(_table(results, "gap"), scale="x0")


@figure(
    "gap_quality",
    inputs=lambda loaded, r: _tables(r, "gap", "evaluation"),
    side_files=("gap_quality.csv",),  # the correlations drawn
)
def _gap_quality(loaded, results, out):
    from diffobj.analysis import figures
    from diffobj.analysis.diagnosis import gap_quality
    from diffobj.io import atomic_path

    evaluation = _table(results, "evaluation")
    metric = "fid" if evaluation["fid"].is_not_null().any() else "fd_classifier"
    correlations = gap_quality(_table(results, "gap"), evaluation, metric)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        correlations.write_csv(tmp)
    return figures.gap_quality(correlations)


@figure(
    "training_curves",
    inputs=lambda loaded, r: (
        _tables(r, "training_log", "training", "runs") + _run_files(loaded, r, "eval_bins.csv")
    ),
)
def _training_curves(loaded, results, out):
    import polars as pl

    from diffobj.analysis.figures_training import training_curves

    # the EMA model's error per bin centre at the end, the curves' last point in the same scale
    final = pl.concat(
        [
            pl.read_csv(results / "runs" / r.id / "eval_bins.csv").select(
                pl.lit(r.id).alias("run_id"), pl.col("log_snr", "error").cast(pl.Float64)
            )
            for r in loaded.runs
        ]
    )
    return training_curves(
        _table(results, "training"),
        _table(results, "training_log"),
        _table(results, "runs"),
        density_bins(loaded),
        final,
    )


@figure("training_density", inputs=lambda loaded, r: _tables(r, "training", "runs"))
def _training_density(loaded, results, out):
    from diffobj.analysis.figures_training import training_density

    return training_density(
        _table(results, "training"), _table(results, "runs"), density_bins(loaded)
    )


def density_bins(loaded):
    """Per run of the spec: its training density (training.density, default "schedule") and
    its fixed log-SNR bins (the process's log_snr_range in training.log_snr_bins equal bins:
    diffobj.objectives.densities.bin_edges), as the resolved run config (runs/<id>/config.yaml) has them."""
    import polars as pl

    from diffobj.objectives.densities import density_name

    rows = []
    for r in loaded.runs:
        lo, hi = r.process_cfg["log_snr_range"]
        rows.append(
            {
                "run_id": r.id,
                "density": density_name(r.training_cfg),
                "log_snr_min": float(lo),
                "log_snr_max": float(hi),
                "log_snr_bins": int(r.training_cfg["log_snr_bins"]),
            }
        )
    return pl.DataFrame(rows)


@figure(
    "samples",
    inputs=lambda loaded, r: (
        _run_files(loaded, r, "samples.npz")
        + _tables(r, "runs", "evaluation")
        + [str(_test_images(loaded, r, d)) for d in _datasets(loaded)]
        + _fd_files(loaded, r)
    ),
)
def _samples(loaded, results, out):
    import numpy as np

    from diffobj.analysis.figures_samples import samples

    return samples(
        {r.id: np.load(results / "runs" / r.id / "samples.npz")["images"] for r in loaded.runs},
        _table(results, "runs"),
        {d: np.load(_test_images(loaded, results, d)) for d in _datasets(loaded)},
        _table(results, "evaluation"),
        fd_real_baselines(loaded, results),
    )


def _test_images(loaded, results: str | Path, dataset: str) -> Path:
    return shared_paths.data_file(loaded, dataset, shared_paths.TEST_IMAGES, root_of(results))


@figure(
    "scaling",
    inputs=lambda loaded, r: _tables(r, "gap", "training_log", "runs"),
    side_files=("scaling_per_level.csv",),  # the power laws per noise level
)
def _scaling(loaded, results, out):
    import polars as pl

    from diffobj.analysis import figures
    from diffobj.analysis.scaling import per_level_fits
    from diffobj.io import atomic_path

    points = scaling_points(loaded, results)
    check_sizes(points, loaded.path)
    # per noise level, raw and J*-subtracted power laws (Xu et al. Fig. 3b, 7), against
    # parameters and against training compute, written beside the figure
    sizes = points.select("run_id", pl.col("n_params", "train_flops").cast(pl.Float64))
    levels = _table(results, "gap").join(sizes, on="run_id")
    fits = pl.concat([per_level_fits(levels, "n_params"), per_level_fits(levels, "train_flops")])
    with atomic_path(out.with_name(f"{out.stem}_per_level.csv")) as tmp:
        fits.write_csv(tmp)
    return figures.scaling(points, fits)


def check_sizes(points, spec_path) -> None:
    """A power law in model size needs models of two sizes or more (found by a rehearsal,
    whose shrunk models were once all alike: a bare scipy ValueError)."""
    from diffobj.errors import UserError

    sizes = sorted(set(points["n_params"].to_list()))
    if len(sizes) < 2:
        raise UserError(
            f"{spec_path}: figures: scaling fits loss against model size, but every model "
            f"of the grid has {sizes[0] if sizes else 0} parameters; give models of two or "
            "more sizes, or drop the figure"
        )


def scaling_points(loaded, results):
    """Per run: parameters, and the ELBO integral of the model's and of the optimal loss over the
    bin centres (diffobj.analysis.scaling.elbo_integral: Gaussian ½ ∫ dlam, masked ∫ sigmoid(lam) dlam)."""
    import numpy as np
    import polars as pl

    from diffobj.analysis.scaling import elbo_integral, forward_flops, training_flops
    from diffobj.models import build_model

    gap = _table(results, "gap")
    rows = []
    for r in loaded.runs:
        sub = gap.filter(pl.col("run_id") == r.id).sort("log_snr")
        lam = sub["log_snr"].to_numpy()
        kind = loaded.spec.processes[r.process].kind
        images = shared_paths.data_file(loaded, r.dataset, shared_paths.IMAGES, root_of(results))
        h, w, c = np.load(images, mmap_mode="r").shape[1:]
        shape = (c, h, w)  # images.npy is NHWC; models take (C, H, W)
        model = build_model(loaded.spec.models[r.model].model_dump(), kind, shape)
        forward = forward_flops(model, kind, shape)
        seen = int(r.training_cfg["steps"]) * int(r.training_cfg["batch_size"])
        rows.append(
            {
                "run_id": r.id,
                "kind": kind,
                "n_params": sum(p.numel() for p in model.parameters()),
                "flops_per_image": forward,
                "train_flops": training_flops(forward, seen),
                "loss": elbo_integral(kind, lam, sub["model_loss"].to_numpy()),
                "optimal_loss": elbo_integral(kind, lam, sub["optimal_loss"].to_numpy()),
            }
        )
    return pl.DataFrame(rows)
