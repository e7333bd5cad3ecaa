"""diffobj optimal-loss: the optimal loss per noise level of a dataset (or the estimator study).

    diffobj optimal-loss --data images.npy --process gaussian --schedule vp_cosine \\
        --levels 32 --queries 4000 --out optimal.csv --figure optimal.png
    diffobj optimal-loss --convergence --data images.npy --process gaussian \\
        --schedule vp_cosine --levels 8 --queries 2000 --subsets 16 64 256 --out study.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from diffobj.data.arrays import read_images
from diffobj.devices import resolve_device
from diffobj.errors import UserError
from diffobj.io import write_csv
from diffobj.objectives import schedules
from diffobj.optimal.estimators import ESTIMATORS, study_kinds
from diffobj.optimal.study import STUDY_COLUMNS, convergence_study
from diffobj.optimal.table import TABLE_COLUMNS, check_counts, optimal_loss_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="images.npy, uint8 (N, H, W, C)")
    parser.add_argument(
        "--process", required=True, choices=schedules.PROCESSES, help="diffusion process"
    )
    parser.add_argument("--schedule", required=True, help="schedule name in --schedules-file")
    parser.add_argument(
        "--levels",
        type=int,
        required=True,
        metavar="K",
        help="noise levels: an even grid of the schedule's time range",
    )
    parser.add_argument(
        "--queries",
        type=int,
        required=True,
        metavar="M",
        help="queries per level (about 2-3 N for the exact estimator)",
    )
    parser.add_argument(
        "--estimator",
        default="exact",
        choices=ESTIMATORS,
        help="exact: all N points; snis/dol/cdol: subsets of --subset L (docs/science.md §3.3)",
    )
    parser.add_argument("--subset", type=int, metavar="L", help="subset size of snis/dol/cdol")
    parser.add_argument(
        "--C", type=float, dest="C", help="cDOL self-weight divisor (default ~2N/L, 1 at L = N)"
    )
    parser.add_argument(
        "--log-snr-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="default -10 10 (gaussian), -9.21 9.21 (masked)",
    )
    parser.add_argument(
        "--schedules-file",
        default=str(schedules.DEFAULT_LIBRARY),
        help="schedule library (default: the installed config/schedules.yaml)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query and subset draws")
    parser.add_argument("--batch-size", type=int, metavar="B", help="queries per batch")
    parser.add_argument("--out", required=True, help="CSV table, one row per level")
    parser.add_argument("--figure", help="also draw the figure (PNG/PDF/SVG)")
    parser.add_argument("--label", help="dataset name in the figure (default: the data's folder)")
    parser.add_argument(
        "--critical-tol",
        type=float,
        default=1e-3,
        help="the loss 'leaves 0' at this fraction of its largest value",
    )
    parser.add_argument(
        "--convergence",
        action="store_true",
        help="estimator study: SNIS / DOL / cDOL against exact (gaussian)",
    )
    parser.add_argument(
        "--subsets",
        type=int,
        nargs="+",
        metavar="L",
        help="study subset sizes (default 16, 64, 256, ... up to N/2)",
    )
    parser.add_argument(
        "--C-factors",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0, 16.0],
        metavar="F",
        help="study cDOL at C = F * N / L; the default C (~2N/L for L << N) is always added",
    )


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_counts(args.levels, args.queries)
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size {args.batch_size}: must be positive")
    schedule = load_schedule(args)
    images = read_images(args.data)
    device = resolve_device(args.device, local_rank=None)
    if device.type == "cuda":  # strict float32 matmuls: TF32 is not shown to stay within stderr
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.convergence:
        run_study(args, schedule, images, device)
        return
    rows = optimal_loss_table(
        images,
        args.process,
        schedule,
        args.levels,
        args.queries,
        estimator=args.estimator,
        subset=args.subset,
        C=args.C,
        seed=args.seed,
        device=device,
        batch_size=args.batch_size,
    )
    write_csv(args.out, rows, TABLE_COLUMNS)
    if args.figure:
        from diffobj.analysis.figure_files import save
        from diffobj.analysis.figures_optimal import optimal_loss_figure

        figure = optimal_loss_figure({dataset_label(args): rows}, rel_tol=args.critical_tol)
        save(figure, args.figure, siblings=False)


def run_study(args: argparse.Namespace, schedule: schedules.Schedule, images, device) -> None:
    if args.process not in study_kinds():
        kinds = " / ".join(study_kinds())
        raise UserError(f"--convergence: the estimator study is for --process {kinds}")
    subsets = args.subsets or default_subsets(len(images))
    rows = convergence_study(
        images,
        schedule,
        args.levels,
        args.queries,
        subsets,
        args.C_factors,
        seed=args.seed,
        device=device,
        batch_size=args.batch_size,
    )
    write_csv(args.out, rows, STUDY_COLUMNS)
    if args.figure:
        from diffobj.analysis.figure_files import save
        from diffobj.analysis.figures_optimal import convergence_figure

        save(convergence_figure(rows), args.figure, siblings=False)


def load_schedule(args: argparse.Namespace) -> schedules.Schedule:
    """The named schedule of --schedules-file, checked against --process, on its lam range."""
    library = schedules.load_library(args.schedules_file)
    if args.schedule not in library:
        raise UserError(
            f"--schedule {args.schedule!r}: not in {args.schedules_file} "
            f"(known: {', '.join(sorted(library))})"
        )
    entry = library[args.schedule]
    declared = entry.get("process") if isinstance(entry, dict) else None
    if declared != args.process:
        raise UserError(
            f"--schedule {args.schedule}: a {declared} schedule in "
            f"{args.schedules_file}, but --process is {args.process}"
        )
    lam_range = tuple(args.log_snr_range or schedules.DEFAULT_LOG_SNR_RANGE[args.process])
    return schedules.build(args.schedule, entry, lam_range, source=str(args.schedules_file))


def default_subsets(n_data: int) -> list[int]:
    sizes = [L for L in (16, 64, 256, 1024, 4096, 16384) if n_data // 2 >= L]
    return sizes or [max(2, n_data // 2)]


def dataset_label(args: argparse.Namespace) -> str:
    return args.label or Path(args.data).resolve().parent.name
