"""diffobj report: the experiment's self-contained HTML page (study text and every figure)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--results", required=True, help="results/<experiment>")
    parser.add_argument("--captions", help="folder of <figure>.rst captions (workflow/report)")
    parser.add_argument("--out", required=True, help="the HTML page")


def run(args: argparse.Namespace) -> None:
    from diffobj import spec
    from diffobj.analysis import report

    loaded = spec.load(args.spec)
    figures_dir = Path(args.results) / "figures"
    report.write(
        Path(args.out),
        f"diffobj: {loaded.experiment}",
        figures_dir / "weighting_study.md",
        [figures_dir / f"{name}.png" for name in loaded.spec.figures],
        Path(args.captions) if args.captions else None,
    )
    print(f"{args.out}: {len(loaded.spec.figures)} figures")
