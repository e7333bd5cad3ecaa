"""The experiment's report: one self-contained HTML page from the generated study text and figures.

The page embeds every figure (PNG, base64), so it opens anywhere, mailed or archived, with no
files beside it. Its text is the Markdown that ``diffobj figures --figure weighting_study``
computed from the tables (``diffobj.analysis.study``), and each figure's caption is the one Snakemake's own
report uses (``workflow/report/<figure>.rst``), so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from diffobj.errors import UserError
from diffobj.io import atomic_path

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
figure { margin: 2em 0; } figure img { max-width: 100%; }
figcaption { color: #333; font-size: 0.9em; max-width: 900px; }
pre { background: #f5f5f5; padding: 0.5em; white-space: pre-wrap; overflow-wrap: anywhere; }
"""
# pre-wrap: the provenance block's long lines (the per-stage runtimes) wrap inside the page
# instead of scrolling sideways


def _image(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: missing (its figure job has not run)")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _caption_html(caption: str) -> str:
    """A caption (reStructuredText, as Snakemake's report reads it) as HTML: escaped, with its
    ``literals`` as code rather than shown with their backticks."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(caption))


def build(
    title: str, study_markdown: Path, figures: Sequence[Path], captions: Path | None = None
) -> str:
    """The HTML page: the study text, then every figure with its caption."""
    import markdown

    if not study_markdown.exists():
        raise UserError(f"{study_markdown}: missing (the weighting_study figure writes it)")
    body = markdown.markdown(study_markdown.read_text(), extensions=["tables", "fenced_code"])
    parts = [
        "<!doctype html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        body,
        "<h2>Figures</h2>",
    ]
    for path in figures:
        caption_file = captions / f"{path.stem}.rst" if captions else None
        caption = caption_file.read_text().strip() if caption_file and caption_file.exists() else ""
        parts += [
            f'<figure id="{html.escape(path.stem)}">',
            f'<img src="{_image(path)}" alt="{html.escape(path.stem)}">',
            f"<figcaption><b>{html.escape(path.stem)}</b>. {_caption_html(caption)}</figcaption>",
            "</figure>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out: Path, *args, **kwargs) -> None:
    text = build(*args, **kwargs)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
