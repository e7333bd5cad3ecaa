"""Figures of the optimal loss (matplotlib + seaborn; CPU side, imported only to draw).

- ``optimal_loss_figure``: per process, the optimal loss against log-SNR and against the noise
  scale (Gaussian: x0-scale loss against sigma = exp(-lam/2), as in Xu et al.'s Fig. 1a; masked:
  nats per dimension against the keep probability), one curve per dataset, with the critical
  noise level (where the loss leaves ~0) marked.
- ``convergence_figure``: the estimator study (SNIS / DOL / cDOL against exact).

Tables are the rows written by ``diffobj optimal-loss`` (dicts, CSV rows of strings, or a polars
DataFrame). Each function returns a Figure; ``save_figure`` writes one file atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from diffobj.io import atomic_path  # noqa: E402
from diffobj.optimal import critical_log_snr, default_c  # noqa: E402

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
    order = np.argsort(c["log_snr"])
    c = {k: v[order] for k, v in c.items()}
    lam, loss, err = c["log_snr"], c["optimal_loss"], c["stderr"]
    axes[0].plot(lam, loss, "o-", ms=3, color=color, label=label)
    axes[0].fill_between(lam, loss - 2 * err, loss + 2 * err, color=color, alpha=0.2, lw=0)
    # the second panel's x: VE noise sigma (Gaussian) or keep probability alpha (masked)
    scale, rising = (
        (c["sigma_ve"], c["optimal_loss_x0"]) if process == "gaussian" else (c["alpha"], loss)
    )
    axes[1].plot(scale, rising, "o-", ms=3, color=color, label=label)
    if process == "gaussian":  # the x0 loss falls like exp(-1/sigma^2): show six decades
        top = np.nanmax(rising)
        axes[1].set_ylim(top * 1e-6, top * 3)
    critical = critical_log_snr(lam, rising, rel_tol)
    if critical is not None:
        star = math.exp(-critical / 2) if process == "gaussian" else _sigmoid(critical)
        name = "σ*" if process == "gaussian" else "α*"
        axes[0].axvline(critical, color=color, ls="--", lw=1)
        axes[1].axvline(star, color=color, ls="--", lw=1, label=f"{label}: {name} = {star:.3g}")


def _label_process(axes, process: str) -> None:
    if process == "gaussian":
        axes[0].set(
            xlabel="log-SNR λ",
            ylabel="optimal loss  E‖ε−ε*‖²/D",
            title="Gaussian: optimal loss (ε scale)",
        )
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel="σ = exp(−λ/2)",
            ylabel="optimal loss  E‖x−E[x|z]‖²/D",
            title="Gaussian: optimal loss (x0 scale)",
        )
    else:
        axes[0].set(
            xlabel="log-SNR λ = log(α/(1−α))",
            ylabel="optimal CE (nats / dim)",
            title="Masked: optimal cross-entropy",
        )
        axes[1].set(
            xscale="log",
            xlabel="keep probability α",
            ylabel="optimal CE (nats / dim)",
            title="Masked: optimal cross-entropy",
        )
    for ax in axes:
        ax.legend(fontsize=7)


def convergence_figure(rows: Rows) -> plt.Figure:
    """(a) estimates against log-SNR at the smallest subset, (b) total relative error against L,
    (c) cDOL's error against C (DOL is C = 1), the default C of each L dashed (★: its error).
    Error: Σ_levels |bias| / Σ_levels exact."""
    c = _columns(rows)
    sns.set_theme(context="paper", style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    smallest = c["subset"].min()
    exact = _unique_levels(c)
    axes[0].plot(exact[0], exact[1], "k-", lw=2, label="exact")
    variants = _variants(c)
    colors = dict(zip(variants, sns.color_palette("tab10", len(variants)), strict=False))
    for name, keep in variants.items():
        at = keep & (c["subset"] == smallest)
        order = np.argsort(c["log_snr"][at])
        axes[0].plot(
            c["log_snr"][at][order],
            c["estimate"][at][order],
            "o--",
            ms=3,
            color=colors[name],
            label=name,
        )
        sizes = np.unique(c["subset"][keep])
        axes[1].plot(
            sizes,
            [_total_error(c, keep & (c["subset"] == L)) for L in sizes],
            "o-",
            color=colors[name],
            label=name,
        )
    for L in np.unique(c["subset"]):
        at = (c["subset"] == L) & np.isin(c["estimator"], ["dol", "cdol"])
        factors = sorted({float(v) for v in c["C_factor"][at]})
        (line,) = axes[2].plot(
            factors,
            [_total_error(c, at & (c["C_factor"] == f)) for f in factors],
            "o-",
            label=f"L = {int(L)}",
        )
        # the C that `--estimator cdol` uses (default_c, ~2N/L), as a factor of N/L
        n_data = int(c["n_data"][c["subset"] == L][0])
        factor = default_c(n_data, int(L)) * L / n_data
        axes[2].axvline(
            factor,
            color=line.get_color(),
            ls="--",
            lw=1,
            label=f"default C, L = {int(L)}: {factor:.3g} N/L",
        )
        default = at & _default_c(c)
        if default.any():
            axes[2].plot(
                [factor], [_total_error(c, default)], "*", ms=11, color=line.get_color(), zorder=3
            )
    axes[0].set(
        ylim=(0, 1.5 * exact[1].max()),
        xlabel="log-SNR λ",
        ylabel="optimal loss (ε scale)",
        title=f"estimates, L = {int(smallest)}",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="subset size L",
        ylabel="Σ|bias| / Σ exact",
        title="bias against subset size",
    )
    axes[1].set_xticks(np.unique(c["subset"]), [str(int(L)) for L in np.unique(c["subset"])])
    axes[1].minorticks_off()
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="C / (N/L)   (DOL: C = 1, i.e. L/N)",
        ylabel="Σ|bias| / Σ exact",
        title="cDOL: sensitivity to C",
    )
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


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
    """Rows whose C is the default (diffobj.optimal.default_c of their N and L)."""
    default = np.array(
        [default_c(int(n), int(L)) for n, L in zip(c["n_data"], c["subset"], strict=True)]
    )
    return np.isclose(c["C"], default, rtol=1e-9, atol=0)


def _unique_levels(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lam, index = np.unique(c["log_snr"], return_index=True)
    return lam, c["exact"][index]


def _total_error(c: dict[str, np.ndarray], keep: np.ndarray) -> float:
    return float(np.abs(c["bias"][keep]).sum() / c["exact"][keep].sum())


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=(path.suffix or ".png").lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


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


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))
