"""diffobj figures: draw one figure of an experiment from its validated tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIGURES = (
    "weighting_study",
    "optimal_loss",
    "gap",
    "gap_x0",
    "gap_quality",
    "convergence",
    "training_curves",
    "training_density",
    "samples",
    "scaling",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--results", required=True, help="results/<experiment>")
    parser.add_argument("--figure", required=True, choices=FIGURES, help="which figure")
    parser.add_argument("--out", required=True, help="PNG path (a PDF is written beside it)")


def run(args: argparse.Namespace) -> None:
    from diffobj import figures, spec

    loaded = spec.load(args.spec)
    results = Path(args.results)
    fig = DRAW[args.figure](loaded, results, Path(args.out))
    figures.save(fig, args.out)


def _table(results: Path, name: str):
    from diffobj import tables

    return tables.read(name, results / "tables" / f"{name}.parquet")


def _weighting_study(loaded, results, out):
    from diffobj import figures, study, tables
    from diffobj.io import atomic_path

    evaluation, configs = _table(results, "evaluation"), _table(results, "study")
    baselines = fd_real_baselines(results)
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


def fd_real_baselines(results: Path) -> dict[str, float]:
    """The classifier FD of held-out real images per dataset (the metric's floor), where the
    evaluation computed it."""
    return {
        path.name.removesuffix("-test-fd.json"): json.loads(path.read_text())["fd_classifier"]
        for path in sorted((results / "features").glob("*-test-fd.json"))
    }


def _optimal_loss(loaded, results, out):
    import polars as pl

    from diffobj.plots_optimal import optimal_loss_figure

    # the raw estimator files: they also hold the x0-scale loss and the VE noise scale
    pairs = sorted({(r.dataset, r.process) for r in loaded.runs})
    frames = {}
    for dataset, process in pairs:
        frame = pl.read_csv(results / "optimal" / f"{dataset}-{process}.csv")
        frames[dataset] = (
            pl.concat([frames[dataset], frame], how="vertical_relaxed")
            if dataset in frames
            else frame
        )
    return optimal_loss_figure(frames)


def _convergence(loaded, results, out):
    import polars as pl

    from diffobj.plots_optimal import convergence_figure

    paths = sorted((results / "optimal").glob("*-convergence.csv"))
    return convergence_figure(pl.concat([pl.read_csv(p) for p in paths], how="vertical_relaxed"))


def _gap(loaded, results, out):
    from diffobj import figures

    return figures.gap(_table(results, "gap"))


def _gap_x0(loaded, results, out):
    from diffobj import figures

    return figures.gap(_table(results, "gap"), scale="x0")


def _gap_quality(loaded, results, out):
    from diffobj import figures
    from diffobj.diagnosis import gap_quality
    from diffobj.io import atomic_path

    evaluation = _table(results, "evaluation")
    metric = "fid" if evaluation["fid"].is_not_null().any() else "fd_classifier"
    correlations = gap_quality(_table(results, "gap"), evaluation, metric)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        correlations.write_csv(tmp)
    return figures.gap_quality(correlations)


def _training_curves(loaded, results, out):
    import polars as pl

    from diffobj.figures_training import training_curves

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


def _training_density(loaded, results, out):
    from diffobj.figures_training import training_density

    return training_density(
        _table(results, "training"), _table(results, "runs"), density_bins(loaded)
    )


def density_bins(loaded):
    """Per run of the spec: its training density (training.density, default "schedule") and
    its fixed log-SNR bins (the process's log_snr_range in training.log_snr_bins equal bins:
    diffobj.densities.bin_edges), as the resolved run config (runs/<id>/config.yaml) has them."""
    import polars as pl

    from diffobj.densities import density_name

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


def _samples(loaded, results, out):
    import numpy as np

    from diffobj.figures_samples import samples

    datasets = sorted({r.dataset for r in loaded.runs})
    return samples(
        {r.id: np.load(results / "runs" / r.id / "samples.npz")["images"] for r in loaded.runs},
        _table(results, "runs"),
        {d: np.load(results / "data" / d / "test" / "images.npy") for d in datasets},
        _table(results, "evaluation"),
        fd_real_baselines(results),
    )


def _scaling(loaded, results, out):
    import polars as pl

    from diffobj import figures
    from diffobj.io import atomic_path
    from diffobj.scaling import per_level_fits

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
    bin centres (diffobj.scaling.elbo_integral: Gaussian ½ ∫ dlam, masked ∫ sigmoid(lam) dlam)."""
    import numpy as np
    import polars as pl

    from diffobj.models import build_model
    from diffobj.scaling import elbo_integral, forward_flops, training_flops

    gap = _table(results, "gap")
    rows = []
    for r in loaded.runs:
        sub = gap.filter(pl.col("run_id") == r.id).sort("log_snr")
        lam = sub["log_snr"].to_numpy()
        kind = loaded.spec.processes[r.process].kind
        h, w, c = np.load(results / "data" / r.dataset / "images.npy", mmap_mode="r").shape[1:]
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


DRAW = {
    "weighting_study": _weighting_study,
    "optimal_loss": _optimal_loss,
    "gap": _gap,
    "gap_x0": _gap_x0,
    "gap_quality": _gap_quality,
    "convergence": _convergence,
    "training_curves": _training_curves,
    "training_density": _training_density,
    "samples": _samples,
    "scaling": _scaling,
}
