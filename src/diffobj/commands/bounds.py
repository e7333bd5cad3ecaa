"""diffobj bounds: the cascade of improved bounds L^(i) of a trained run (``diffobj.objectives.bounds``).

    diffobj bounds --run RUN_DIR --data DATA/images.npy --out RUN_DIR/bounds.csv
        [--cuts T] [--levels-per-cut K] [--images M] [--queries Q] [--seed S]
    diffobj bounds-table --spec SPEC --results results/<exp> --table bounds.parquet --figure bounds.png

``--data`` is the run's training set (the optimal decoder is the posterior over it). One CSV
row per cut t(i), i = 0 (least noise: the ELBO) .. T (pure noise), with the run's weighting's
cut weights and the cumulative-weight identity (``bounds.COLUMNS``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run folder (model.pt)")
    parser.add_argument("--data", required=True, help="the run's training images (.npy)")
    parser.add_argument("--out", required=True, help="bounds table (.csv)")
    parser.add_argument("--cuts", type=int, default=16, help="T: cuts t(1..T) after t(0)")
    parser.add_argument(
        "--levels-per-cut", type=int, default=2, help="error-curve levels between two cuts"
    )
    parser.add_argument("--images", type=int, default=256, help="model evaluations per level")
    parser.add_argument("--queries", type=int, default=1024, help="decoder queries per cut")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the noise and decoder-query draws"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows per model call")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present"
    )


def run(args: argparse.Namespace) -> None:
    from diffobj.data import read_images
    from diffobj.errors import UserError
    from diffobj.io import write_csv
    from diffobj.objectives import bounds

    if not args.out.endswith(".csv"):
        raise UserError(f"--out must name a .csv file, got {args.out!r}")
    bounds.check_positive(
        cuts=args.cuts,
        levels_per_cut=args.levels_per_cut,
        images=args.images,
        queries=args.queries,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    rows = bounds.bounds_of_run(
        args.run,
        read_images(args.data),
        cuts=args.cuts,
        per_cut=args.levels_per_cut,
        n_images=args.images,
        queries=args.queries,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
    )
    write_csv(args.out, rows, list(bounds.COLUMNS))
    first, last = rows[0], rows[-1]
    print(
        f"{args.out}: L^(0) (ELBO) {first['bound']:.4f}, L^({len(rows) - 1}) {last['bound']:.4f} "
        f"nats/dim; Σ w_i L^(i) - const {first['weighted_bound_sum'] - first['constant']:.4f} vs "
        f"reweighted loss {first['reweighted_loss']:.4f} ({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
    )


def add_arguments_bounds_table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--results", required=True, help="results/<experiment>")
    parser.add_argument("--table", required=True, help="output parquet")
    parser.add_argument("--figure", required=True, help="output PNG (a PDF is written beside it)")


def run_bounds_table(args: argparse.Namespace) -> None:
    from diffobj import spec
    from diffobj.analysis import figures, gather, tables
    from diffobj.objectives import bounds

    loaded = spec.load(args.spec)
    runs = tables.validate("runs", gather.runs(loaded))
    columns = ["run_id", *bounds.COLUMNS]
    frame = gather.per_run_csv(loaded, Path(args.results), "bounds.csv", columns)
    frame = frame.join(runs.select("run_id", "kind", "schedule", "weighting"), on="run_id")
    frame = tables.write("bounds", frame, args.table)  # validated before anything is drawn
    figures.save(figures.bounds(frame), args.figure)
    print(f"{args.table}: {frame.height} rows; figure {args.figure}")
