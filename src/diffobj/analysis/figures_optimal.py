"""Figures of the optimal loss (matplotlib + seaborn; CPU side, imported only to draw).

- ``optimal_loss_figure``: per process, the optimal loss against log-SNR and against the noise
  scale (Gaussian: x0-scale loss against sigma = exp(-lam/2), as in Xu et al.'s Fig. 1a; masked:
  nats per dimension against the keep probability), one curve per dataset, with the critical
  noise level (where the loss leaves ~0) marked.
- ``convergence_figure``: the estimator study (SNIS / DOL / cDOL against exact).

Tables are the rows written by ``diffobj optimal-loss`` (dicts, CSV rows of strings, or a polars
DataFrame). Each function returns a Figure; ``diffobj.analysis.figure_files.save(fig, path, siblings=False)``
writes it as one file atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402

from diffobj import processes  # noqa: E402
from diffobj.optimal.curve import critical_log_snr  # noqa: E402
from diffobj.optimal.estimators import default_c  # noqa: E402

Rows = Sequence[Mapping[str, Any]] | Any  # list of dicts, CSV rows, or a polars DataFrame


def optimal_loss_figure(tables: Mapping[str, Rows], rel_tol: float = 1e-3) -> plt.Figure:
    """Optimal loss of each dataset (label -> table), one row of two panels per process."""
    by_process: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for label, table in tables.items():
        columns = _columns(table)
        for process in dict.fromkeys(columns["process"]):
            keep = columns["process"] == process
            by_process.setdefault(str(process), {})[label] = {
                k: v[keep] for k, v in columns.items()
            }
    sns.set_theme(context="paper", style="whitegrid")
    fig, axes = plt.subplots(len(by_process), 2, figsize=(11, 4 * len(by_process)), squeeze=False)
    palette = dict(zip(tables, sns.color_palette("tab10", len(tables)), strict=False))
    for row, (process, curves) in zip(axes, by_process.items(), strict=True):
        for label, c in curves.items():
            _draw_process(row, process, label, c, palette[label], rel_tol)
        _label_process(row, process)
    fig.tight_layout()
    return fig


def _draw_process(
    axes, process: str, label: str, c: dict[str, np.ndarray], color, rel_tol: float
) -> None:
    view = processes.get(process).loss_axes
    order = np.argsort(c["log_snr"])
    c = {k: v[order] for k, v in c.items()}
    lam, loss, err = c["log_snr"], c["optimal_loss"], c["stderr"]
    axes[0].plot(lam, loss, "o-", ms=3, color=color, label=label)
    axes[0].fill_between(lam, loss - 2 * err, loss + 2 * err, color=color, alpha=0.2, lw=0)
    rising = c[view.rising_column]
    axes[1].plot(c[view.noise_column], rising, "o-", ms=3, color=color, label=label)
    if view.rising_decades is not None:
        top = np.nanmax(rising)
        axes[1].set_ylim(top * 10.0**-view.rising_decades, top * 3)
    critical = critical_log_snr(lam, rising, rel_tol)
    if critical is not None:
        star = view.noise_of_log_snr(critical)
        axes[0].axvline(critical, color=color, ls="--", lw=1)
        axes[1].axvline(
            star, color=color, ls="--", lw=1, label=f"{label}: {view.noise_symbol}* = {star:.3g}"
        )


def _label_process(axes, process: str) -> None:
    view = processes.get(process).loss_axes
    axes[0].set(xlabel=view.log_snr_label, ylabel=view.error_label, title=view.error_title)
    log_loss = {} if view.rising_decades is None else {"yscale": "log"}
    axes[1].set(
        xscale="log",
        **log_loss,
        xlabel=view.noise_label,
        ylabel=view.rising_label,
        title=view.rising_title,
    )
    for ax in axes:
        ax.legend(fontsize=7)


BIAS_LABEL = "relative bias: Σ|estimate − exact| / Σ exact\n(sums over the noise levels)"


def convergence_figure(rows: Rows) -> plt.Figure:
    """(a) estimates against log-SNR at the smallest subset, on a symmetric log axis (the
    estimators differ by decades, and the exact loss is 0 at low noise); (b) the relative bias
    against the subset size L; (c) cDOL's relative bias against C (DOL is C = 1), the default C
    of each L dashed (★: its bias). Relative bias: Σ_levels |bias| / Σ_levels exact, where a
    level's bias is the mean estimate minus the exact loss on the same queries. In (b), an
    estimator whose bias is orders of magnitude above the others (SNIS at low noise) gets its
    own upper part of a broken axis, so the others can still be told apart."""
    c = _columns(rows)
    sns.set_theme(context="paper", style="whitegrid")
    fig = plt.figure(figsize=(15, 4.6))
    grid = fig.add_gridspec(1, 3, wspace=0.45)
    estimates_ax = fig.add_subplot(grid[0])
    smallest = c["subset"].min()
    exact = _unique_levels(c)
    estimates_ax.plot(exact[0], exact[1], "k-", lw=2, label="exact")
    variants = _variants(c)
    colors = dict(zip(variants, sns.color_palette("tab10", len(variants)), strict=False))
    sizes = {name: np.unique(c["subset"][keep]) for name, keep in variants.items()}
    errors = {
        name: np.array([_total_error(c, keep & (c["subset"] == L)) for L in sizes[name]])
        for name, keep in variants.items()
    }
    bias_axes = _bias_axes(fig, grid[1], errors)
    for name, keep in variants.items():
        at = keep & (c["subset"] == smallest)
        order = np.argsort(c["log_snr"][at])
        estimates_ax.plot(
            c["log_snr"][at][order],
            c["estimate"][at][order],
            "o--",
            ms=3,
            color=colors[name],
            label=name,
        )
        for ax in bias_axes:
            ax.plot(sizes[name], errors[name], "o-", color=colors[name], label=name)
    cdol_ax = fig.add_subplot(grid[2])
    _c_panel(cdol_ax, c)
    floor = 10 ** np.floor(np.log10(1e-2 * np.nanmax(exact[1])))
    estimates_ax.set_yscale("symlog", linthresh=floor, linscale=0.5)
    estimates_ax.set_ylim(bottom=0)
    estimates_ax.set(
        xlabel="log-SNR λ",
        ylabel=f"optimal loss estimate (ε scale)\nlog scale, linear below {floor:g}",
        title=f"estimates, L = {int(smallest)} of N = {int(c['n_data'][0])}",
    )
    subsets = np.unique(c["subset"])
    for ax in bias_axes:
        ax.set(xscale="log", yscale="log")
        ax.set_xticks(subsets, [str(int(L)) for L in subsets])
        ax.minorticks_off()
        _plain_log_ticks(ax)
    bias_axes[0].set(xlabel="subset size L", ylabel=BIAS_LABEL)
    bias_axes[-1].set_title("relative bias against subset size (colours as left)")
    if len(bias_axes) > 1:
        bias_axes[0].set_ylabel(BIAS_LABEL, y=0.7)
        bias_axes[1].tick_params(labelbottom=False)
        bias_axes[1].set_xlabel("")
    cdol_ax.set(
        xscale="log",
        yscale="log",
        xlabel="correction C, in units of N/L   (DOL: C = 1)",
        ylabel=BIAS_LABEL,
        title="cDOL: sensitivity to C",
    )
    _plain_log_ticks(cdol_ax)
    for ax in (estimates_ax, cdol_ax):
        ax.legend(fontsize=7)
    return fig


def _plain_log_ticks(ax: plt.Axes) -> None:
    """Ticks at 1, 2 and 5 of each decade, as plain numbers: these panels span a decade or
    two, where a log axis's default (one labelled tick per decade, 6×10⁻¹) reads badly."""
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _bias_axes(fig: plt.Figure, cell, errors: Mapping[str, np.ndarray]) -> list[plt.Axes]:
    """The relative-bias panel: one log axis, or, when the estimators fall into two groups more
    than two decades apart, a broken axis (lower part first), each part spanning its group."""
    split = _split(errors)
    if split is None:
        return [fig.add_subplot(cell)]
    low, high = split
    inner = cell.subgridspec(2, 1, height_ratios=[1, 2], hspace=0.08)
    bottom = fig.add_subplot(inner[1])
    top = fig.add_subplot(inner[0], sharex=bottom)
    for ax, group in ((bottom, low), (top, high)):
        values = np.concatenate([errors[n] for n in group])
        values = values[values > 0]
        ax.set_ylim(values.min() / 1.6, values.max() * 1.6)
    top.spines["bottom"].set_visible(False)
    bottom.spines["top"].set_visible(False)
    # the break: two short diagonals on each side, where the axis is cut
    marks = dict(marker=[(-1, -0.5), (1, 0.5)], ms=10, ls="none", color="k", mec="k", mew=1)
    top.plot([0, 1], [0, 0], transform=top.transAxes, clip_on=False, **marks)
    bottom.plot([0, 1], [1, 1], transform=bottom.transAxes, clip_on=False, **marks)
    return [bottom, top]


def _split(errors: Mapping[str, np.ndarray], decades: float = 2.0):
    """Estimators in two groups (low, high) when the widest gap between them, sorted by their
    smallest value, spans more than ``decades`` of bias; else None."""
    ranges = {name: (v[v > 0].min(), v[v > 0].max()) for name, v in errors.items() if (v > 0).any()}
    names = sorted(ranges, key=lambda n: ranges[n][0])
    best, at = 0.0, None
    for i in range(1, len(names)):
        below = max(ranges[n][1] for n in names[:i])
        above = min(ranges[n][0] for n in names[i:])
        if above > below and np.log10(above / below) > best:
            best, at = np.log10(above / below), i
    if at is None or best <= decades:
        return None
    return names[:at], names[at:]


def _c_panel(ax: plt.Axes, c: dict[str, np.ndarray]) -> None:
    """cDOL's relative bias against its C factor, one line per subset size, default C marked."""
    for L in np.unique(c["subset"]):
        at = (c["subset"] == L) & np.isin(c["estimator"], ["dol", "cdol"])
        factors = sorted({float(v) for v in c["C_factor"][at]})
        (line,) = ax.plot(
            factors,
            [_total_error(c, at & (c["C_factor"] == f)) for f in factors],
            "o-",
            label=f"L = {int(L)}",
        )
        # the C that `--estimator cdol` uses (default_c, ~2N/L), as a factor of N/L
        n_data = int(c["n_data"][c["subset"] == L][0])
        factor = default_c(n_data, int(L)) * L / n_data
        ax.axvline(
            factor,
            color=line.get_color(),
            ls="--",
            lw=1,
            label=f"default C, L = {int(L)}: {factor:.3g} N/L",
        )
        default = at & _default_c(c)
        if default.any():
            ax.plot(
                [factor], [_total_error(c, default)], "*", ms=11, color=line.get_color(), zorder=3
            )


def _variants(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """snis, dol, cdol at its default C (its factor of N/L depends on L) and one cdol per other
    C factor -> row mask."""
    out = {}
    for name in ("snis", "dol"):
        out[name] = c["estimator"] == name
    cdol = c["estimator"] == "cdol"
    default = cdol & _default_c(c)
    out["cdol default C"] = default
    for factor in sorted({float(f) for f in c["C_factor"][cdol & ~default]}):
        out[f"cdol C={factor:g}N/L"] = cdol & ~default & (c["C_factor"] == factor)
    return {k: v for k, v in out.items() if v.any()}


def _default_c(c: dict[str, np.ndarray]) -> np.ndarray:
    """Rows whose C is the default (diffobj.optimal.estimators.default_c of their N and L)."""
    default = np.array(
        [default_c(int(n), int(L)) for n, L in zip(c["n_data"], c["subset"], strict=True)]
    )
    return np.isclose(c["C"], default, rtol=1e-9, atol=0)


def _unique_levels(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lam, index = np.unique(c["log_snr"], return_index=True)
    return lam, c["exact"][index]


def _total_error(c: dict[str, np.ndarray], keep: np.ndarray) -> float:
    return float(np.abs(c["bias"][keep]).sum() / c["exact"][keep].sum())


def _columns(rows: Rows) -> dict[str, np.ndarray]:
    """Rows as numpy columns; numbers parsed (CSV rows are strings), text left as text."""
    records: Iterable[Mapping[str, Any]] = rows.to_dicts() if hasattr(rows, "to_dicts") else rows
    records = list(records)
    if not records:
        raise ValueError("no rows to plot")
    out = {}
    for key in records[0]:
        values = [r[key] for r in records]
        try:
            out[key] = np.array([float(v) if v not in ("", None) else math.nan for v in values])
        except (TypeError, ValueError):
            out[key] = np.array([str(v) for v in values])
    return out
