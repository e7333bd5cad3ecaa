"""diffobj tables: gather one experiment's run files into validated parquet tables."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="config/config.yaml", help="experiment YAML")
    parser.add_argument("--results", required=True, help="results/<experiment>")
    parser.add_argument("--out-dir", required=True, help="where the parquet tables go")


def run(args: argparse.Namespace) -> None:
    from diffobj import spec
    from diffobj.analysis import gather, study, tables

    loaded = spec.load(args.spec)
    results, out = Path(args.results), Path(args.out_dir)
    runs = tables.validate("runs", gather.runs(loaded))
    evaluation = tables.validate("evaluation", gather.evaluation(loaded, results, runs))
    frames = {
        "runs": runs,
        "training_log": gather.training_log(loaded, results),
        "training": gather.training(loaded, results),
        "evaluation": evaluation,
        "study": study.configurations(evaluation),
    }
    if loaded.spec.optimal_loss.enabled:
        optimal = tables.validate("optimal_loss", gather.optimal_loss(loaded, results))
        frames["optimal_loss"] = optimal
        frames["gap"] = gather.gap(loaded, results, runs, optimal)
    validated = {name: tables.validate(name, frame) for name, frame in frames.items()}
    record = experiment_provenance(loaded, results)
    for name, frame in validated.items():  # all validated before the first is written
        tables.write(name, frame, out / f"{name}.parquet", provenance=record)
        print(f"{out / name}.parquet: {frame.height} rows")


def experiment_provenance(loaded, results: Path) -> dict:
    """Code, libraries, spec and seeds of the experiment, and how its jobs ran."""
    from diffobj import provenance
    from diffobj.analysis import gather

    return {
        **provenance.environment(loaded),
        "jobs": provenance.job_summary(gather.job_runtimes(loaded, results)),
    }
