"""The samples figure: one row per configuration, real images on top, each run's score beside it.

A configuration is (dataset, process, schedule, weighting, model); its seeds sit side by side,
each a block of its first samples, so seeds of one objective compare along a row and objectives
down a column. Each dataset's rows start with held-out real images, the row every other row is
judged against.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from diffobj.analysis.figures import plt
from diffobj.analysis.study import quality_metric

METRIC_NAMES = {"fid": "FID", "fd_classifier": "classifier FD"}
CONFIG = ["dataset", "process", "schedule", "weighting", "model"]
ROW_INCHES = 0.95  # per row of the figure: readable 8x8 digits at 150 dpi, ~140 px a row


def tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Images (N, H, W, C) side by side in ``cols`` columns (default: a square), 1 px apart on
    white; (rows·(H+1), cols·(W+1)) for one channel, else with the channels last."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 1), cols * (w + 1), c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img
    return canvas[..., 0] if c == 1 else canvas


def _blocks(blocks: list[np.ndarray], gap: int) -> tuple[np.ndarray, list[float]]:
    """Tiles side by side, ``gap`` white columns apart; and the centre column of each."""
    height = max(b.shape[0] for b in blocks)
    spacer = np.full((height, gap, *blocks[0].shape[2:]), 255, dtype=np.uint8)
    parts, centres, x = [], [], 0
    for i, block in enumerate(blocks):
        pad = np.full((height - block.shape[0], *block.shape[1:]), 255, dtype=np.uint8)
        parts += ([spacer] if i else []) + [np.concatenate([block, pad])]
        x += gap if i else 0
        centres.append(x + block.shape[1] / 2)
        x += block.shape[1]
    return np.concatenate(parts, axis=1), centres


def sample_rows(
    runs: pl.DataFrame,
    evaluation: pl.DataFrame | None = None,
    max_seeds: int = 3,
) -> list[dict]:
    """The figure's rows, top to bottom: per dataset (grid order) a real-data row, then one row
    per configuration (grid order), each with its first ``max_seeds`` seeds' run ids and scores
    and the mean score over all its seeds. A row: dataset, label, runs [(seed, run_id, score)],
    mean, n_seeds (the real rows: runs empty)."""
    metric = quality_metric(evaluation) if evaluation is not None else None
    scored = runs.join(
        evaluation.select("run_id", pl.col(metric).alias("score"))
        if metric
        else runs.select("run_id", pl.lit(None, pl.Float64).alias("score")),
        on="run_id",
        how="left",
    ).sort("seed", maintain_order=True)
    rows = []
    for dataset in scored["dataset"].unique(maintain_order=True):
        rows.append(
            {"dataset": dataset, "label": f"{dataset}: real (held out)", "runs": [], "mean": None}
        )
        of = runs.filter(pl.col("dataset") == dataset).select(CONFIG).unique(maintain_order=True)
        for config in of.iter_rows(named=True):
            seeds = scored.filter(
                pl.all_horizontal(pl.col(k) == v for k, v in config.items())
            ).sort("seed")
            values = seeds["score"].drop_nulls()
            rows.append(
                {
                    "dataset": dataset,
                    "label": " · ".join(config[k] for k in CONFIG[1:]),
                    "runs": list(seeds.select("seed", "run_id", "score").head(max_seeds).rows()),
                    "mean": float(values.mean()) if len(values) else None,
                    "n_seeds": seeds.height,
                }
            )
    return rows


def samples(
    images: Mapping[str, np.ndarray],
    runs: pl.DataFrame,
    real: Mapping[str, np.ndarray],
    evaluation: pl.DataFrame | None = None,
    fd_real: Mapping[str, float] | None = None,
    per_seed: int = 16,
    max_seeds: int = 3,
) -> plt.Figure:
    """Each configuration's samples in one row (``sample_rows``): its first ``max_seeds`` seeds
    side by side, ``per_seed`` samples each (uint8 NHWC, ``images`` per run id), the seed's
    score (FID, else classifier FD, from ``evaluation``) above its block and the mean over all
    the configuration's seeds beside the row; above each dataset's rows, as many of its held-out
    ``real`` images, with the classifier FD of those images (``fd_real``), the metric's floor."""
    rows = sample_rows(runs, evaluation, max_seeds)
    metric = quality_metric(evaluation) if evaluation is not None else None
    name = METRIC_NAMES.get(metric or "", "score")
    shown = max(len(r["runs"]) for r in rows)
    cols = min(per_seed, 8)
    panels = []
    for row in rows:
        if row["runs"]:
            blocks = [tile(images[run][:per_seed], cols) for _, run, _ in row["runs"]]
            titles = [f"seed {seed}: {_score(name, s)}" for seed, _, s in row["runs"]]
            beside = (
                f"{name}\nmean {row['mean']:.3g} over {_seeds(row['n_seeds'])}"
                if row["mean"] is not None
                else f"{name}: not computed"
            )
        else:
            pool = real[row["dataset"]]
            count = max(1, min(shown, len(pool) // per_seed))
            blocks = [tile(pool[i * per_seed : (i + 1) * per_seed], cols) for i in range(count)]
            titles = ["held-out images"] * len(blocks)
            floor = (fd_real or {}).get(row["dataset"])
            beside = (
                f"classifier FD of\nthese images: {floor:.3g}\n(the floor)"
                if floor is not None
                else "held-out real images"
            )
        canvas, centres = _blocks(blocks, gap=blocks[0].shape[1] // 8 + 2)
        panels.append((row, canvas, centres, titles, beside))
    # every row on one canvas size (white to the right and below), so one image pixel is as
    # large in every row: a row with fewer seeds or samples is shorter, not magnified
    height = max(p[1].shape[0] for p in panels)
    width = max(p[1].shape[1] for p in panels)
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, ROW_INCHES * len(rows)), squeeze=False)
    for ax, (row, canvas, centres, titles, beside) in zip(axes[:, 0], panels, strict=True):
        pad = [(0, height - canvas.shape[0]), (0, width - canvas.shape[1])]
        canvas = np.pad(canvas, pad + [(0, 0)] * (canvas.ndim - 2), constant_values=255)
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        for x, title in zip(centres, titles, strict=True):
            ax.text(x, -1, title, ha="center", va="bottom", fontsize=7)
        ax.text(
            -0.01,
            0.5,
            row["label"],
            transform=ax.transAxes,
            ha="right",
            va="center",
            fontsize=8,
            fontweight="bold" if not row["runs"] else "normal",
        )
        ax.text(1.01, 0.5, beside, transform=ax.transAxes, ha="left", va="center", fontsize=7)
    fig.suptitle(
        f"Samples: one row per configuration (process · schedule · weighting · model), the first "
        f"{per_seed} samples of up to {max_seeds} seeds; lower {name} is better",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _score(name: str, value: float | None) -> str:
    return f"{name} {value:.3g}" if value is not None else f"{name} n/a"
