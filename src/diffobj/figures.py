"""The figures of the study, one function per figure, drawn with seaborn from validated tables.

Each function takes polars tables and returns a matplotlib Figure; ``save`` writes it as PNG
and PDF atomically. Nothing here computes science: the numbers come from the tables.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import seaborn as sns  # noqa: E402

from diffobj.io import atomic_path  # noqa: E402

sns.set_theme(context="paper", style="whitegrid")


def save(fig: plt.Figure, path: str | Path) -> list[Path]:
    """Write ``path`` (its suffix decides the format) and its PNG/PDF sibling; close the figure."""
    path = Path(path)
    written = []
    for suffix in dict.fromkeys([path.suffix or ".png", ".png", ".pdf"]):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=suffix.lstrip("."), dpi=150, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


def _style_monotone(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(pl.col("monotonic"))
        .then(pl.lit("monotone"))
        .otherwise(pl.lit("non-monotone"))
        .alias("monotone")
    )


def weightings(table: pl.DataFrame, masked_table: pl.DataFrame) -> plt.Figure:
    """(a) w(lam) against lam, each normalised to its maximum; (b) the total cross-entropy weight
    against t under the MD4 cosine schedule (Shi & Titsias, Fig. 1). Dashed: non-monotone."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    curves = (
        table.sort("log_snr")
        .unique(["weighting", "log_snr"], maintain_order=True)
        .with_columns(
            (pl.col("weight") / pl.col("weight").abs().max().over("weighting")).alias("w_norm")
        )
    )
    names = list(dict.fromkeys(curves["weighting"].to_list() + masked_table["weighting"].to_list()))
    palette = dict(zip(names, sns.color_palette("tab10", len(names)), strict=False))
    for ax, frame, x, y in (
        (axes[0], _style_monotone(curves), "log_snr", "w_norm"),
        (axes[1], _style_monotone(masked_table), "t", "total_weight"),
    ):
        sns.lineplot(
            frame.to_pandas(),
            x=x,
            y=y,
            hue="weighting",
            style="monotone",
            style_order=["monotone", "non-monotone"],
            palette=palette,
            ax=ax,
            sort=True,
        )
    axes[0].set(xlabel="log-SNR λ", ylabel="w(λ) / max w", title="Weightings in log-SNR")
    axes[1].set(
        xlabel="time t",
        ylabel="total cross-entropy weight  w(λ_t)·(−α'_t / (1 − α_t))",
        title="Total CE weight, MD4 cosine schedule",
        yscale="log",
    )
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def _label(frame: pl.DataFrame) -> pl.DataFrame:
    """'weighting' with a dagger for non-monotone ones (no improved-ELBO interpretation)."""
    return frame.with_columns(
        pl.when(pl.col("monotonic"))
        .then(pl.col("weighting"))
        .otherwise(pl.col("weighting") + pl.lit(" †"))
        .alias("weighting ")
    )


STUDY_METRICS = {"fd_classifier": "classifier FD ↓", "fid": "FID ↓", "nll_bpd": "NLL (bits/dim) ↓"}


def weighting_study(
    evaluation: pl.DataFrame, fd_real: dict[str, float] | None = None
) -> plt.Figure:
    """Sample quality and likelihood per weighting × schedule, one row of panels per process.
    † marks non-monotone weightings (not a weighted sum of improved ELBOs); dotted lines: the
    classifier FD of held-out real images (``fd_real``, per dataset), the floor of that metric."""
    metrics = [m for m in STUDY_METRICS if evaluation[m].is_not_null().any()]
    kinds = evaluation["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        len(kinds), len(metrics), figsize=(4.8 * len(metrics), 3.4 * len(kinds)), squeeze=False
    )
    for row, kind in enumerate(kinds):
        frame = _label(evaluation.filter(pl.col("kind") == kind)).to_pandas()
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            sns.barplot(frame, x="weighting ", y=metric, hue="schedule", ax=ax, errorbar=None)
            if metric == "nll_bpd":
                _error_bars(ax, frame, metric, "nll_stderr")
            ax.set(
                title=f"{kind}: {STUDY_METRICS[metric]}",
                xlabel="weighting († non-monotone)",
                ylabel=STUDY_METRICS[metric],
            )
            ax.tick_params(axis="x", rotation=30)
            if metric in ("fd_classifier", "fid"):
                ax.set_yscale("log")
            if metric == "fd_classifier":
                for dataset, value in (fd_real or {}).items():
                    ax.axhline(
                        value, color="black", ls=":", lw=1.2, label=f"real test images ({dataset})"
                    )
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _error_bars(ax: plt.Axes, frame, metric: str, err: str) -> None:
    for container, (_, group) in zip(
        ax.containers, frame.groupby("schedule", sort=False), strict=False
    ):
        centres = [bar.get_x() + bar.get_width() / 2 for bar in container]
        ax.errorbar(
            centres[: len(group)],
            group[metric],
            yerr=group[err],
            fmt="none",
            ecolor="black",
            capsize=2,
        )


def study_table(evaluation: pl.DataFrame) -> str:
    """The weighting study as a Markdown table (weighting rows, process/schedule columns)."""
    metrics = [m for m in STUDY_METRICS if evaluation[m].is_not_null().any()]
    lines = [
        "| process | schedule | weighting | monotone | "
        + " | ".join(STUDY_METRICS[m] for m in metrics)
        + " |",
        "|---" * (4 + len(metrics)) + "|",
    ]
    for r in evaluation.sort("kind", "schedule", "weighting").iter_rows(named=True):
        values = [_fmt(r[m], r["nll_stderr"] if m == "nll_bpd" else None) for m in metrics]
        lines.append(
            f"| {r['kind']} | {r['schedule']} | {r['weighting']} | {'yes' if r['monotonic'] else 'no'} | "
            + " | ".join(values)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, err: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g} ± {err:.2g}" if err is not None else f"{value:.4g}"


def gap(gap_table: pl.DataFrame) -> plt.Figure:
    """Per log-SNR: the optimal loss, each run's loss (EMA model), and the gap (Xu et al. Fig. 1a, 2)."""
    kinds = gap_table["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        2, len(kinds), figsize=(6 * len(kinds), 7), squeeze=False, sharex="col"
    )
    units = {"gaussian": "eps-MSE per dim", "masked": "CE nats per dim"}
    for col, kind in enumerate(kinds):
        frame = gap_table.filter(pl.col("kind") == kind).with_columns(
            (pl.col("weighting") + " / " + pl.col("schedule")).alias("run")
        )
        top, bottom = axes[0, col], axes[1, col]
        sns.lineplot(
            frame.to_pandas(),
            x="log_snr",
            y="model_loss",
            hue="run",
            ax=top,
            marker="o",
            markersize=3,
        )
        optimal = frame.unique("log_snr").sort("log_snr")
        top.plot(
            optimal["log_snr"], optimal["optimal_loss"], color="black", lw=2.5, label="optimal loss"
        )
        top.set(title=f"{kind}: loss per noise level", ylabel=f"loss ({units[kind]})", yscale="log")
        # the optimal loss falls to ~0 below the critical noise level; keep the models readable
        top.set_ylim(bottom=frame["model_loss"].min() / 100)
        top.legend(fontsize=7)
        sns.lineplot(frame.to_pandas(), x="log_snr", y="gap", hue="run", ax=bottom, legend=False)
        bottom.axhline(0, color="black", lw=1)
        bottom.set(
            title="gap = model loss − optimal loss",
            xlabel="log-SNR λ",
            ylabel=f"gap ({units[kind]})",
        )
    fig.tight_layout()
    return fig


def training_curves(training_log: pl.DataFrame, runs: pl.DataFrame) -> plt.Figure:
    """Training loss (as optimised, i.e. weighted) against step, one panel per process."""
    frame = training_log.join(runs.select("run_id", "kind", "schedule", "weighting"), on="run_id")
    kinds = frame["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        sub = frame.filter(pl.col("kind") == kind).with_columns(
            (pl.col("weighting") + " / " + pl.col("schedule")).alias("run")
        )
        sns.lineplot(sub.to_pandas(), x="step", y="loss", hue="run", ax=ax)
        ax.set(
            title=f"{kind}: weighted training loss",
            xlabel="step",
            ylabel="loss per dimension",
            yscale="log",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sample_grids(samples: dict[str, np.ndarray], per_run: int = 16) -> plt.Figure:
    """A grid of the first samples of each run (uint8 NHWC), titled by run id."""
    names = list(samples)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        ax.imshow(
            _tile(samples[name][:per_run]), cmap="gray", vmin=0, vmax=255, interpolation="nearest"
        )
        ax.set_title(name.replace("-", " "), fontsize=7)
    fig.tight_layout()
    return fig


def _tile(images: np.ndarray) -> np.ndarray:
    n, h, w, c = images.shape
    side = int(np.ceil(np.sqrt(n)))
    canvas = np.full((side * (h + 1), side * (w + 1), c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, side)
        canvas[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img
    return canvas[..., 0] if c == 1 else canvas


# -- scaling laws -------------------------------------------------------------------------------


def fit_power_law(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Least squares of log y = log beta + alpha log x: exponent with a t-interval, and R²."""
    from scipy import stats

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    fit = stats.linregress(lx, ly)
    n = len(lx)
    half = stats.t.ppf((1 + level) / 2, n - 2) * fit.stderr if n > 2 else float("nan")
    return {
        "alpha": fit.slope,
        "alpha_lo": fit.slope - half,
        "alpha_hi": fit.slope + half,
        "beta": float(np.exp(fit.intercept)),
        "r2": fit.rvalue**2,
        "n": n,
    }


def scaling(points: pl.DataFrame) -> plt.Figure:
    """Loss and loss − optimal loss against model size, with power-law fits side by side
    (Xu et al. Fig. 3): columns n_params, kind, loss, optimal_loss."""
    kinds = points["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 4 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        sub = points.filter(pl.col("kind") == kind).sort("n_params")
        x = sub["n_params"].to_numpy()
        for ax, y, title in (
            (axes[row, 0], sub["loss"].to_numpy(), "loss"),
            (axes[row, 1], (sub["loss"] - sub["optimal_loss"]).to_numpy(), "loss − optimal loss"),
        ):
            ax.loglog(x, y, "o")
            if len(x) >= 3 and (y > 0).all():
                f = fit_power_law(x, y)
                grid = np.geomspace(x.min(), x.max(), 50)
                ax.loglog(
                    grid,
                    f["beta"] * grid ** f["alpha"],
                    "-",
                    label=f"α = {f['alpha']:.3f} [{f['alpha_lo']:.3f}, {f['alpha_hi']:.3f}], R² = {f['r2']:.3f}",
                )
                ax.legend(fontsize=8)
            ax.set(title=f"{kind}: {title}", xlabel="parameters", ylabel=title)
    fig.tight_layout()
    return fig


def bounds(table: pl.DataFrame) -> plt.Figure:
    """Shi & Titsias's cascade: L^(i) against the cut t(i) per run (t = t(0): the ELBO), and the
    cut weights w_i of each run's weighting (all >= 0 exactly for a monotone weighting)."""
    kinds = table["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        2, len(kinds), figsize=(6 * len(kinds), 7), squeeze=False, sharex="col"
    )
    for col, kind in enumerate(kinds):
        frame = table.filter(pl.col("kind") == kind).with_columns(
            (pl.col("weighting") + " / " + pl.col("schedule")).alias("run")
        )
        top, bottom = axes[0, col], axes[1, col]
        for (run,), group in frame.sort("i").group_by("run", maintain_order=True):
            line = top.errorbar(
                group["t"], group["bound"], yerr=group["bound_stderr"], marker="o", ms=3, label=run
            )
            top.plot(group["t"][0], group["bound"][0], "*", ms=12, color=line[0].get_color())
            total = group["cut_weight"].abs().sum() or 1.0
            bottom.plot(group["t"], group["cut_weight"] / total, marker="o", ms=3, label=run)
        top.set(
            title=f"{kind}: improved bounds L^(i) (★ i = 0, the ELBO)",
            ylabel="bound (nats per dimension)",
            yscale="log",  # the ELBO end is often 10-100x the tightest bound
        )
        top.legend(fontsize=7)
        bottom.axhline(0, color="black", lw=1)
        bottom.set(
            title="cut weights w_i of the run's weighting (share of Σ|w_i|)",
            xlabel="cut time t(i)",
            ylabel="w_i / Σ|w_i|",
        )
    fig.tight_layout()
    return fig
