"""Writing a figure: the one saver of every figure (``diffobj.analysis.figures``, ``diffobj.analysis.figures_optimal``).

Only matplotlib (Agg): importing this sets no seaborn theme, so each figure module keeps its own
look.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffobj.io import atomic_path  # noqa: E402

DPI = 150


def save(fig: plt.Figure, path: str | Path, *, siblings: bool = True) -> list[Path]:
    """Write ``fig`` atomically (150 dpi, tight bounding box) and close it; the files written.

    With ``siblings`` (the study's figures): ``path`` and its PNG and PDF siblings (a path
    without a suffix names only those two). Without (``diffobj optimal-loss --figure``): ``path``
    alone. The format is the file's suffix, PNG where it has none."""
    path = Path(path)
    if siblings:
        suffixes = dict.fromkeys([path.suffix or ".png", ".png", ".pdf"])
        targets = [path.with_suffix(suffix) for suffix in suffixes]
    else:
        targets = [path]
    for target in targets:
        with atomic_path(target) as tmp:
            fig.savefig(
                tmp, format=(target.suffix or ".png").lstrip("."), dpi=DPI, bbox_inches="tight"
            )
    plt.close(fig)
    return targets
