"""The figures of the study, one function per figure, drawn with seaborn from validated tables.

Each function takes polars tables and returns a matplotlib Figure; ``save`` (that of
``diffobj.analysis.figure_files``) writes it as PNG and PDF atomically. Nothing here computes science:
the numbers come from the tables. This module holds the figures of the evaluation (weightings, the study, the gap, scaling, bounds)
and what every figure shares; the figures of training are in ``diffobj.analysis.figures_training``, the
samples figure in ``diffobj.analysis.figures_samples``, those of the optimal loss in
``diffobj.analysis.figures_optimal``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import seaborn as sns  # noqa: E402

from diffobj import processes  # noqa: E402
from diffobj.analysis.figure_files import save  # noqa: E402, F401 - figures.save: PNG and PDF

sns.set_theme(context="paper", style="whitegrid")


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
    study: pl.DataFrame, evaluation: pl.DataFrame, fd_real: dict[str, float] | None = None
) -> plt.Figure:
    """Sample quality and likelihood per weighting, one row of panels per process: the mean over
    seeds with its 95% interval (``diffobj.analysis.study``) and each seed's value as a dot. † marks
    non-monotone weightings (not a weighted sum of improved ELBOs); dotted line: the classifier FD
    of held-out real images (``fd_real``, per dataset), the floor of that metric."""
    metrics = [m for m in STUDY_METRICS if study[m].is_not_null().any()]
    kinds = study["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        len(kinds), len(metrics), figsize=(4.8 * len(metrics), 3.4 * len(kinds)), squeeze=False
    )
    for row, kind in enumerate(kinds):
        configs = _label(study.filter(pl.col("kind") == kind)).with_columns(
            (pl.col("schedule") + " / " + pl.col("model")).alias("schedule / model")
        )
        names = configs["weighting "].unique(maintain_order=True).to_list()
        series = configs["schedule / model"].unique(maintain_order=True).to_list()
        seeds = _label(evaluation.filter(pl.col("kind") == kind))
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            width = 0.8 / len(series)
            for j, (name, group) in enumerate(
                configs.group_by("schedule / model", maintain_order=True)
            ):
                x = (
                    np.array([names.index(w) for w in group["weighting "]])
                    + (j - (len(series) - 1) / 2) * width
                )
                y = group[metric].to_numpy()
                err = np.vstack(
                    [y - group[f"{metric}_lo"].to_numpy(), group[f"{metric}_hi"].to_numpy() - y]
                )
                ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=f"{name[0]} (mean, 95% CI)")
                dots = seeds.filter((pl.col("schedule") + " / " + pl.col("model")) == name[0])
                ax.scatter(
                    [
                        names.index(w) + (j - (len(series) - 1) / 2) * width
                        for w in dots["weighting "]
                    ],
                    dots[metric].to_numpy(),
                    s=9,
                    color="grey",
                    alpha=0.7,
                    zorder=3,
                    label="one seed" if j == 0 else None,
                )
            ax.set_xticks(range(len(names)), names, rotation=30)
            ax.set(
                title=f"{kind}: {STUDY_METRICS[metric]}",
                xlabel="weighting († non-monotone)",
                ylabel=STUDY_METRICS[metric],
            )
            if metric in ("fd_classifier", "fid"):
                ax.set_yscale("log")
            if metric == "fd_classifier":
                for dataset, value in (fd_real or {}).items():
                    ax.axhline(
                        value, color="black", ls=":", lw=1.2, label=f"real test images ({dataset})"
                    )
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# one colour per weighting, one dash per schedule; the band is the 95% interval over seeds
LINES = {"hue": "weighting", "style": "schedule", "errorbar": ("ci", 95), "seed": 0}


def legend_outside(ax: plt.Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def loss_floor(losses: np.ndarray) -> float:
    """Where a loss axis turns from log to linear (matplotlib's symlog ``linthresh``): the decade
    of the smallest positive model loss. The optimal loss is 0 wherever the training set is
    memorised (low noise); on a symmetric log axis those points stay on the axis, at 0, and
    values below every model's loss, which no model resolves, sit near it."""
    positive = losses[np.isfinite(losses) & (losses > 0)]
    return float(10 ** np.floor(np.log10(positive.min()))) if len(positive) else 1.0


def gap(gap_table: pl.DataFrame, scale: str = "eps") -> plt.Figure:
    """Per noise level: the optimal loss, each weighting's loss (EMA model, training images, mean
    over seeds) and the gap (Xu et al. Fig. 1a, 2). ``scale``: "eps" (eps-MSE against log-SNR) or
    "x0", the paper's unified VE / x0 view (x0-MSE against σ̂ = σ/α, log axis; diffobj.objectives.scales).
    Masked panels have one scale."""
    if scale not in ("eps", "x0"):
        raise ValueError(f"gap figure: scale must be 'eps' or 'x0', got {scale!r}")
    kinds = gap_table["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(
        2, len(kinds), figsize=(6.5 * len(kinds), 7), squeeze=False, sharex="col"
    )
    for col, kind in enumerate(kinds):
        x0 = scale == "x0" and processes.get(kind).continuous
        loss, optimum, diff = (
            f"{c}_x0" if x0 else c for c in ("model_loss", "optimal_loss", "gap")
        )
        x, unit = (
            ("sigma_ve", "x0-MSE per dim") if x0 else ("log_snr", processes.get(kind).error_unit)
        )
        frame = gap_table.filter(pl.col("kind") == kind).sort("weighting", "schedule")
        top, bottom = axes[0, col], axes[1, col]
        sns.lineplot(frame.to_pandas(), x=x, y=loss, ax=top, **LINES)
        optimal = frame.unique("log_snr").sort("log_snr")
        top.plot(
            optimal[x], optimal[optimum], "o-", ms=3, color="black", lw=2.5, label="optimal loss"
        )
        floor = loss_floor(frame[loss].to_numpy())
        top.set_yscale("symlog", linthresh=floor, linscale=0.5)
        top.set_ylim(bottom=0)
        top.set(
            title=f"{kind}: loss per noise level",
            ylabel=f"loss ({unit})\nlog scale, linear below {floor:g}",
        )
        legend_outside(top)
        sns.lineplot(frame.to_pandas(), x=x, y=diff, ax=bottom, legend=False, **LINES)
        bottom.axhline(0, color="black", lw=1)
        bottom.set(
            title="gap = model loss − optimal loss",
            xlabel="σ̂ = σ/α (VE)" if x0 else "log-SNR λ",
            ylabel=f"gap ({unit})",
        )
        if x0:
            bottom.set_xscale("log")
    fig.tight_layout()
    return fig


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


def scaling(points: pl.DataFrame, fits: pl.DataFrame | None = None) -> plt.Figure:
    """Loss and loss − optimal loss against model size, with power-law fits side by side
    (Xu et al. Fig. 3): columns n_params, kind, loss, optimal_loss. With ``fits``
    (``scaling.per_level_fits`` against n_params), two more panels per process: per noise
    level, the exponent b with its 95% interval and the Pearson |ρ| of the log-log points, raw
    and J*-subtracted (Fig. 3b, 7, 8)."""
    kinds = points["kind"].unique(maintain_order=True).to_list()
    columns = 2 if fits is None else 4
    fig, axes = plt.subplots(
        len(kinds), columns, figsize=(5.5 * columns, 4 * len(kinds)), squeeze=False
    )
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
        if fits is not None:
            _per_level_fits(axes[row, 2], axes[row, 3], fits, kind)
    fig.tight_layout()
    return fig


PER_LEVEL_FITS = {"raw": "raw J", "minus_optimal": "J − J*"}


def _per_level_fits(b_ax: plt.Axes, r_ax: plt.Axes, fits: pl.DataFrame, kind: str) -> None:
    """Exponent b (95% interval) and |Pearson ρ| per log-SNR level, raw and J*-subtracted."""
    sub = fits.filter((pl.col("kind") == kind) & (pl.col("against") == "n_params"))
    for offset, (fit, label) in zip((-0.08, 0.08), PER_LEVEL_FITS.items(), strict=True):
        f = sub.filter(pl.col("fit") == fit).sort("log_snr")
        lam, b = f["log_snr"].to_numpy(), f["b"].to_numpy()
        err = np.vstack([b - f["b_lo"].to_numpy(), f["b_hi"].to_numpy() - b])
        b_ax.errorbar(lam + offset, b, yerr=err, fmt="o", ms=3, capsize=2, label=label)
        r_ax.plot(lam, np.abs(f["pearson_r"].to_numpy()), "o-", ms=3, label=label)
    b_ax.axhline(0, color="black", lw=1)
    b_ax.set(title=f"{kind}: exponent b per level", xlabel="log-SNR λ", ylabel="b in J = a F^(−b)")
    r_ax.set(
        title=f"{kind}: fit quality per level",
        xlabel="log-SNR λ",
        ylabel="|Pearson ρ| of log F, log J",
        ylim=(0, 1.05),
    )
    for ax in (b_ax, r_ax):
        ax.legend(fontsize=8)


def gap_quality(correlations: pl.DataFrame) -> plt.Figure:
    """Per noise level: the correlation across runs of the gap with sample quality, Pearson r
    with its 95% interval (Xu et al. Fig. 2b analogue); one panel per process kind."""
    kinds = correlations["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 3.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = correlations.filter(pl.col("kind") == kind).sort("log_snr")
        lam, r = sub["log_snr"].to_numpy(), sub["pearson_r"].to_numpy()
        ax.fill_between(lam, sub["r_lo"].to_numpy(), sub["r_hi"].to_numpy(), alpha=0.25)
        ax.plot(lam, r, "o-", label="Pearson r (95% interval)")
        ax.plot(lam, sub["spearman_rho"].to_numpy(), "x--", label="Spearman ρ")
        ax.axhline(0, color="black", lw=1)
        metric, n = sub["metric"][0], int(sub["n"].max())
        ax.set(
            title=f"{kind}: gap vs {metric} across {n} runs",
            xlabel="log-SNR λ",
            ylabel="correlation",
            ylim=(-1.05, 1.05),
        )
        ax.legend(fontsize=7)
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
