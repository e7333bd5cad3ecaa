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
        pl.when(pl.col("monotonic")).then(pl.lit("monotone")).otherwise(pl.lit("non-monotone")).alias("monotone")
    )


def weightings(table: pl.DataFrame, masked_table: pl.DataFrame) -> plt.Figure:
    """(a) w(lam) against lam, each normalised to its maximum; (b) the total cross-entropy weight
    against t under the MD4 cosine schedule (Shi & Titsias, Fig. 1). Dashed: non-monotone."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    curves = (
        table.sort("log_snr")
        .unique(["weighting", "log_snr"], maintain_order=True)
        .with_columns((pl.col("weight") / pl.col("weight").abs().max().over("weighting")).alias("w_norm"))
    )
    names = list(dict.fromkeys(curves["weighting"].to_list() + masked_table["weighting"].to_list()))
    palette = dict(zip(names, sns.color_palette("tab10", len(names)), strict=False))
    for ax, frame, x, y in (
        (axes[0], _style_monotone(curves), "log_snr", "w_norm"),
        (axes[1], _style_monotone(masked_table), "t", "total_weight"),
    ):
        sns.lineplot(frame.to_pandas(), x=x, y=y, hue="weighting", style="monotone",
                     style_order=["monotone", "non-monotone"], palette=palette, ax=ax, sort=True)
    axes[0].set(xlabel="log-SNR λ", ylabel="w(λ) / max w", title="Weightings in log-SNR")
    axes[1].set(xlabel="time t", ylabel="total cross-entropy weight  w(λ_t)·(−α'_t / (1 − α_t))",
                title="Total CE weight, MD4 cosine schedule", yscale="log")
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def placeholder_if_empty(frame: pl.DataFrame, title: str) -> plt.Figure | None:
    """A figure that says why it is empty (e.g. a grid with one model size cannot show scaling)."""
    if frame.height:
        return None
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, title, ha="center", va="center", wrap=True)
    return fig


def log_spaced_ticks(values: np.ndarray) -> np.ndarray:
    return np.unique(np.round(values, 1))
