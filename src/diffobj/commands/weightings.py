"""diffobj weightings: tabulate every (weighting, schedule, process) of a spec, and draw them."""

from __future__ import annotations

import argparse

from diffobj import spec
from diffobj.objectives import schedules


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--out", required=True, help="table (parquet)")
    parser.add_argument("--figure", help="figure (png; a pdf is written beside it)")
    parser.add_argument("--points", type=int, default=257, help="time points per schedule")


def run(args: argparse.Namespace) -> None:
    import polars as pl

    from diffobj.analysis import figures, tables
    from diffobj.objectives.weightings import evaluate_on_schedule

    loaded = spec.load(args.spec)
    # a weighting that reads the optimal loss (Jstar) has no values without a dataset's table
    tabulated = [c for c in loaded.combinations() if not loaded.weighting(c[2]).uses_optimal_loss]
    for name in sorted({c[2] for c in loaded.combinations()} - {c[2] for c in tabulated}):
        print(f"weightings: {name} uses Jstar (a dataset's optimal loss): not tabulated")
    frames = [
        _rows(loaded, process, sched, weight, args.points, evaluate_on_schedule)
        for process, sched, weight in tabulated
    ]
    table = tables.validate("weightings", pl.concat(frames))

    # Shi & Titsias Fig. 1: every weighting that applies to MD4 cosine's (masked) process, under it
    entry = loaded.schedule_entries["md4_cosine"]
    kind = entry["process"]
    log_snr_range = next(
        (tuple(p.log_snr_range) for p in loaded.spec.processes.values() if p.kind == kind),
        schedules.DEFAULT_LOG_SNR_RANGE[kind],
    )
    md4 = schedules.build("md4_cosine", entry, log_snr_range, str(loaded.path))
    names = list(dict.fromkeys(w for _, _, w in loaded.combinations()))
    masked = [
        _frame(loaded.weighting(w), md4, kind, args.points, evaluate_on_schedule)
        for w in names
        if kind in loaded.weighting(w).processes and not loaded.weighting(w).uses_optimal_loss
    ]
    masked_table = tables.validate("weightings", pl.concat(masked))
    figure = figures.weightings(table, masked_table) if args.figure else None
    tables.write("weightings", table, args.out)
    if figure is not None:
        figures.save(figure, args.figure)


def _rows(loaded, process, sched, weight, points, evaluate):
    kind = loaded.spec.processes[process].kind
    return _frame(loaded.weighting(weight), loaded.schedule(sched, process), kind, points, evaluate)


def _frame(weighting, schedule, kind, points, evaluate):
    import polars as pl

    values = evaluate(weighting, schedule, kind, points)
    n = len(values["t"])
    return pl.DataFrame(
        {
            "weighting": [weighting.name] * n,
            "schedule": [schedule.name] * n,
            "process": [kind] * n,
            **{k: v.numpy() for k, v in values.items()},
            "monotonic": [weighting.is_monotone(schedule)] * n,
        }
    ).select(
        ["weighting", "schedule", "process", "t", "log_snr", "weight", "total_weight", "monotonic"]
    )
