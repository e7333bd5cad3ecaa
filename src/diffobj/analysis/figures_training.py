"""Figures of training, drawn from the training tables: the curves in one comparable scale
(``training_curves``) and the log-SNRs as they were drawn (``training_density``).

Both read the training table (per run, logged window and fixed log-SNR bin: the mean unweighted
error and the count of draws) and, per run, its bins and training density (the figures command's
``density_bins``: columns run_id, density, log_snr_min, log_snr_max, log_snr_bins).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib import ticker

from diffobj import processes
from diffobj.analysis import inference
from diffobj.analysis.figures import LINES, legend_outside, plt

DEFAULT_DENSITY = (
    "schedule"  # diffobj.objectives.densities: lam = lam(t), t uniform on the run's schedule
)


def _with_bin(frame: pl.DataFrame, bins: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (run_id, log_snr at bin centres) with the fixed bin's index and width."""
    span = pl.col("log_snr_max") - pl.col("log_snr_min")
    return (
        frame.join(bins.select("run_id", "log_snr_min", "log_snr_max", "log_snr_bins"), on="run_id")
        .with_columns(
            # the centres are the run's bin centres: the bin is floor((centre - lo) / width)
            ((pl.col("log_snr") - pl.col("log_snr_min")) / span * pl.col("log_snr_bins"))
            .floor()
            .cast(pl.Int64)
            .alias("bin"),
            (span / pl.col("log_snr_bins")).alias("width"),
        )
        .drop("log_snr_min", "log_snr_max", "log_snr_bins")
    )


def _elbo_term(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Σ over the rows of each group of ELBO weight · error · bin width (``Process.elbo_weight``)."""
    lam, kinds = frame["log_snr"].to_numpy(), frame["kind"].to_numpy()
    weight = np.empty_like(lam)
    for kind in np.unique(kinds):
        weight[kinds == kind] = processes.get(kind).elbo_weight(lam[kinds == kind])
    return (
        frame.with_columns(pl.Series("weight", weight))
        .group_by(keys, maintain_order=True)
        .agg((pl.col("weight") * pl.col("error") * pl.col("width")).sum().alias("elbo_term"))
    )


NO_BINS = (
    "no log-SNR bin was drawn in half the logged\nwindows of every run: log less often"
    " (training.log_every)"
)
COVERAGE = 0.5  # a bin is summed when every run drew it in at least this share of its windows


def _filled(drawn: pl.DataFrame, coverage: float = COVERAGE) -> pl.DataFrame:
    """The drawn rows on the bins every run of a process drew in at least ``coverage`` of its
    windows, with a window that missed such a bin given the run's error there interpolated in
    step between the neighbouring windows (held at the ends)."""
    runs_of = drawn.group_by("process").agg(pl.col("run_id").n_unique().alias("runs"))
    share = (
        drawn.group_by("process", "run_id", "bin")
        .agg(pl.col("step").n_unique().alias("drawn"))
        .join(drawn.group_by("run_id").agg(pl.col("step").n_unique().alias("n")), on="run_id")
        .filter(pl.col("drawn") >= coverage * pl.col("n"))
    )
    kept = (
        share.group_by("process", "bin")
        .agg(pl.col("run_id").n_unique().alias("covered"))
        .join(runs_of, on="process")
        .filter(pl.col("covered") == pl.col("runs"))
        .select("process", "bin")
    )
    rows = drawn.join(kept, on=["process", "bin"]).sort("run_id", "bin", "step")
    steps = {run: np.unique(g["step"].to_numpy()) for (run,), g in drawn.group_by("run_id")}
    parts = []
    for (run, _), group in rows.group_by("run_id", "bin", maintain_order=True):
        every = steps[run]
        error = np.interp(every, group["step"].to_numpy(), group["error"].to_numpy())
        parts.append(
            group.head(1)
            .drop("step", "error", "count")
            .join(pl.DataFrame({"step": every, "error": error}), how="cross")
        )
    return pl.concat(parts) if parts else rows.drop("count")


def training_elbo(
    training: pl.DataFrame,
    training_log: pl.DataFrame,
    runs: pl.DataFrame,
    bins: pl.DataFrame,
    final: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Each run's training curve in the ELBO's scale, comparable across weightings and schedules.

    A weighting rescales the loss a run optimises and a schedule moves where its log-SNRs are
    drawn, so neither the weighted loss nor the plain mean error over the draws compares runs.
    The unweighted error per fixed bin does: per logged window, Σ_bins ELBO weight(λ) · error ·
    bin width (``Process.elbo_weight``) is the ELBO's diffusion term over those bins, in nats per
    dimension. Every run of a process is summed over the same bins (``_filled``: those each
    run drew in nearly every window), so that one run's rare tail draws do not move its sum.

    ``final``: the EMA model's error per bin centre at the end (eval_bins.csv: run_id, log_snr,
    error), summed over the same bins. Returns (curves: run_id, step, images_seen, elbo_term;
    the bins summed per process: process, kind, lo, hi, bins, of; the final values or None).
    """
    meta = runs.select("run_id", "process", "kind")
    drawn = _with_bin(training.filter(pl.col("count") > 0).join(meta, on="run_id"), bins)
    rows = _filled(drawn)
    curves = (
        _elbo_term(rows, ["run_id", "step"])
        .join(training_log.select("run_id", "step", "images_seen"), on=["run_id", "step"])
        .sort("run_id", "step")
    )
    summed = (
        rows.group_by("process", "kind")
        .agg(
            (pl.col("log_snr") - pl.col("width") / 2).min().alias("lo"),
            (pl.col("log_snr") + pl.col("width") / 2).max().alias("hi"),
            pl.col("bin").n_unique().alias("bins"),
        )
        .join(
            bins.join(meta, on="run_id")
            .group_by("process")
            .agg(pl.col("log_snr_bins").max().alias("of")),
            on="process",
        )
    )
    ema = None
    if final is not None:
        common = rows.select("process", "bin").unique()
        ema_rows = _with_bin(
            final.select("run_id", "log_snr", "error").join(meta, on="run_id"), bins
        )
        ema = _elbo_term(ema_rows.join(common, on=["process", "bin"]), ["run_id"])
    return curves, summed, ema


def _config_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """A 'configuration' label: the weighting, then whichever of schedule, model and training
    density differ among the frame's runs (seeds of one configuration share it)."""
    parts = ["weighting"] + [c for c in ("schedule", "model", "density") if frame[c].n_unique() > 1]
    return frame.with_columns(pl.concat_str(parts, separator=" / ").alias("configuration"))


def _mean_band(values: pl.DataFrame, keys: list[str], column: str) -> pl.DataFrame:
    """Mean over seeds and its 95% t-interval (``inference.mean_interval``; null for one seed)."""
    rows = []
    for key, group in values.group_by(keys, maintain_order=True):
        lo, hi = inference.mean_interval(group[column].to_numpy())
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "mean": float(group[column].mean()),
                "lo": None if np.isnan(lo) else float(lo),
                "hi": None if np.isnan(hi) else float(hi),
                "seeds": group.height,
            }
        )
    return pl.DataFrame(rows)


def training_curves(
    training: pl.DataFrame,
    training_log: pl.DataFrame,
    runs: pl.DataFrame,
    bins: pl.DataFrame,
    final: pl.DataFrame | None = None,
) -> plt.Figure:
    """Per process, each configuration's ELBO diffusion term on its training draws
    (``training_elbo``) against the training images seen: mean over seeds, the 95% t-interval
    over seeds as a band, and the EMA model's value at the end (``final``) as a diamond."""
    curves, summed, ema = training_elbo(training, training_log, runs, bins, final)
    info = runs.join(bins.select("run_id", "density"), on="run_id")
    panels = info["process"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, process in zip(axes[0], panels, strict=True):
        runs_of = _config_labels(info.filter(pl.col("process") == process))
        kind = runs_of["kind"][0]
        name = process if process == kind else f"{process} ({kind})"
        ax.set(
            title=f"{name}: ELBO term of the training error",
            xlabel="training images seen",
            ylabel=f"{processes.get(kind).elbo_label}  (nats / dim)",
        )
        if process not in set(summed["process"]):  # said on the panel, not left out unseen
            ax.text(0.5, 0.5, NO_BINS, transform=ax.transAxes, ha="center", va="center")
            continue
        names = runs_of["configuration"].unique(maintain_order=True).to_list()
        colours = dict(zip(names, sns.color_palette("tab10", len(names)), strict=True))
        labelled = curves.join(runs_of.select("run_id", "configuration"), on="run_id")
        keys = ["configuration", "step"]
        lines = _mean_band(labelled, keys, "elbo_term").join(
            labelled.group_by(keys).agg(pl.col("images_seen").mean()), on=keys
        )
        for config in names:
            line = lines.filter(pl.col("configuration") == config).sort("step")
            x = line["images_seen"].to_numpy()
            ax.plot(x, line["mean"].to_numpy(), color=colours[config], label=config)
            if line["lo"].is_not_null().all():
                ax.fill_between(
                    x,
                    line["lo"].to_numpy(),
                    line["hi"].to_numpy(),
                    color=colours[config],
                    alpha=0.2,
                )
        if ema is not None:
            _ema_marks(ax, ema, runs_of, colours, labelled)
        row = summed.filter(pl.col("process") == process).row(0, named=True)
        ax.text(
            0.99,
            0.98,
            f"λ ∈ [{row['lo']:.3g}, {row['hi']:.3g}]: {row['bins']} of {row['of']} bins",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
        if (lines["mean"] > 0).all():
            ax.set_yscale("log")
            # plain numbers: the curves span a decade or two, where 6×10⁰ reads badly
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
        legend_outside(ax)
    fig.tight_layout()
    return fig


def _ema_marks(ax: plt.Axes, ema: pl.DataFrame, runs_of: pl.DataFrame, colours, curves) -> None:
    """The EMA model's value at the end of training: mean over seeds with its t-interval."""
    last = curves.group_by("run_id").agg(pl.col("images_seen").max())
    marks = _mean_band(
        ema.join(last, on="run_id").join(runs_of.select("run_id", "configuration"), on="run_id"),
        ["configuration"],
        "elbo_term",
    ).join(
        runs_of.select("run_id", "configuration")
        .join(last, on="run_id")
        .group_by("configuration")
        .agg(pl.col("images_seen").max()),
        on="configuration",
    )
    # side by side around the last step, as configurations often end close together
    span = curves["images_seen"].max() - curves["images_seen"].min()
    order = {name: i for i, name in enumerate(colours)}
    for r in marks.iter_rows(named=True):
        err = None
        if r["lo"] is not None:
            err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]]
        shift = (order[r["configuration"]] - (len(order) - 1) / 2) * 0.012 * span
        ax.errorbar(
            [r["images_seen"] + shift],
            [r["mean"]],
            yerr=err,
            fmt="D",
            ms=5,
            capsize=3,
            color=colours[r["configuration"]],
        )
    # one legend entry for every configuration's diamond, in no configuration's colour
    ax.plot([], [], "D", color="0.3", ms=5, label="EMA model at the end")


def _minor_label(value: float, _) -> str:
    """Label the minor ticks 2 and 5 of each decade only, so they do not crowd."""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def drawn_density(
    training: pl.DataFrame, runs: pl.DataFrame, bins: pl.DataFrame, after: float = 0.5
) -> pl.DataFrame:
    """Per run and log-SNR bin: the empirical density (per unit λ) of the log-SNRs drawn in
    training after ``after`` of the run's last logged step, count / total / bin width.

    ``training``: the training table (bin centres, counts per logged window; bins without draws
    are absent). ``bins``: per run, ``density`` (the run's training.density) and the fixed bins,
    ``log_snr_min``, ``log_snr_max``, ``log_snr_bins`` (diffobj.objectives.densities.bin_edges); every bin
    of the run gets a row, 0 where nothing was drawn. Columns: the runs table's, ``density``,
    ``log_snr``, ``count``, ``p``."""
    late = training.filter(pl.col("step") > after * pl.col("step").max().over("run_id"))
    fixed = bins.select("run_id", "log_snr_min", "log_snr_max", "log_snr_bins")
    grid = pl.concat(
        pl.DataFrame(
            {
                "run_id": run,
                "bin": np.arange(k),
                "log_snr": lo + (hi - lo) * (np.arange(k) + 0.5) / k,
            }
        )
        for run, lo, hi, k in fixed.iter_rows()
    ).with_columns(pl.col("bin").cast(pl.Int64))
    counts = _with_bin(late, bins).group_by("run_id", "bin").agg(pl.col("count").sum())
    width = (pl.col("log_snr_max") - pl.col("log_snr_min")) / pl.col("log_snr_bins")
    frame = (
        grid.join(counts, on=["run_id", "bin"], how="left")
        .join(fixed, on="run_id")
        .with_columns(pl.col("count").fill_null(0))
        .with_columns((pl.col("count") / pl.col("count").sum().over("run_id") / width).alias("p"))
    )
    return (
        runs.join(bins.select("run_id", "density"), on="run_id")
        .join(frame.select("run_id", "log_snr", "count", "p"), on="run_id")
        .sort("run_id", "log_snr")
    )


def training_density(
    training: pl.DataFrame, runs: pl.DataFrame, bins: pl.DataFrame, after: float = 0.5
) -> plt.Figure:
    """The training schedule as it was drawn: per process, the density of the log-SNRs sampled
    in the second half of training (``drawn_density``), mean over seeds with its 95% band.
    Colour: weighting, joined with the training density when any run departs from the
    schedule's own (e.g. Xu et al.'s optimal_loss_schedule); dashes: the schedule."""
    frame = drawn_density(training, runs, bins, after)
    hue = "weighting"
    if (frame["density"] != DEFAULT_DENSITY).any():
        hue = "weighting / density"
        frame = frame.with_columns((pl.col("weighting") + " / " + pl.col("density")).alias(hue))
    frame = frame.sort(hue, "schedule", "log_snr")
    names = frame[hue].unique(maintain_order=True).to_list()
    palette = dict(zip(names, sns.color_palette("tab10", len(names)), strict=True))  # all panels
    drawn = set(frame["process"])
    processes = [p for p in runs["process"].unique(maintain_order=True) if p in drawn]
    fig, axes = plt.subplots(1, len(processes), figsize=(6.5 * len(processes), 4), squeeze=False)
    for ax, process in zip(axes[0], processes, strict=True):
        sub = frame.filter(pl.col("process") == process)
        sns.lineplot(
            sub.to_pandas(), x="log_snr", y="p", ax=ax, **{**LINES, "hue": hue}, palette=palette
        )
        ax.set(
            title=f"{process} ({sub['kind'][0]}): log-SNR drawn after {after:.0%} of training",
            xlabel="log-SNR λ",
            ylabel="density of drawn λ (per unit λ)",
        )
        ax.set_ylim(bottom=0)
        legend_outside(ax)
    fig.tight_layout()
    return fig
