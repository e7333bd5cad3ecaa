"""Gather the plain files of compute jobs (CSV / JSON per run) into the result tables.

Compute jobs write CSV and JSON so a GPU node needs only torch and numpy; this module turns
them into polars frames that ``diffobj.analysis.tables`` validates. The gap to the optimal loss is
computed here: each run's binned model error minus the optimal loss at the same log-SNR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from diffobj import processes, shared_paths
from diffobj.errors import UserError
from diffobj.io import read_json_if_present
from diffobj.objectives import scales
from diffobj.spec import LoadedSpec


def runs(loaded: LoadedSpec) -> pl.DataFrame:
    monotone = {}
    for process, sched, weight in loaded.combinations():
        monotone[(process, sched, weight)] = loaded.weighting(weight).is_monotone(
            loaded.schedule(sched, process)
        )
    return pl.DataFrame(
        [
            {
                "run_id": r.id,
                "dataset": r.dataset,
                "process": r.process,
                "kind": loaded.spec.processes[r.process].kind,
                "schedule": r.schedule,
                "weighting": r.weighting,
                "model": r.model,
                "seed": r.seed,
                "monotonic": monotone[(r.process, r.schedule, r.weighting)],
            }
            for r in loaded.runs
        ]
    )


def _read_csv(path: Path, run_id: str) -> pl.DataFrame:
    if not path.exists():
        raise UserError(f"{path}: missing (run {run_id} has not finished this step)")
    return pl.read_csv(path, infer_schema_length=None).with_columns(pl.lit(run_id).alias("run_id"))


def per_run_csv(loaded: LoadedSpec, results: Path, name: str, columns: list[str]) -> pl.DataFrame:
    frames = [_read_csv(results / "runs" / r.id / name, r.id) for r in loaded.runs]
    missing = [c for c in columns if c not in frames[0].columns]
    if missing:
        raise UserError(
            f"{results / 'runs' / loaded.runs[0].id / name}: missing column {missing[0]!r}"
        )
    return pl.concat([f.select(columns) for f in frames], how="vertical_relaxed")


def training_log(loaded: LoadedSpec, results: Path) -> pl.DataFrame:
    from diffobj.training.train_log import LOG_COLUMNS

    cols = ["run_id", *LOG_COLUMNS]
    return per_run_csv(loaded, results, "train_log.csv", cols).with_columns(
        pl.col("step", "images_seen").cast(pl.Int64), pl.col(cols[3:]).cast(pl.Float64)
    )


def training(loaded: LoadedSpec, results: Path) -> pl.DataFrame:
    cols = ["run_id", "step", "log_snr", "error", "count"]
    frame = per_run_csv(loaded, results, "train_bins.csv", cols)
    return frame.filter(pl.col("count") > 0).with_columns(
        pl.col("step", "count").cast(pl.Int64), pl.col("log_snr", "error").cast(pl.Float64)
    )


def optimal_loss(loaded: LoadedSpec, results: Path) -> pl.DataFrame:
    frames = []
    for dataset, process in sorted({(r.dataset, r.process) for r in loaded.runs}):
        path = shared_paths.optimal_table(loaded, dataset, process, shared_paths.root_of(results))
        if not path.exists():
            raise UserError(f"{path}: missing (the optimal-loss job has not run)")
        frame = pl.read_csv(path)
        frames.append(
            frame.select(
                pl.lit(dataset).alias("dataset"),
                pl.lit(loaded.spec.processes[process].kind).alias("process"),
                pl.lit(shared_paths.optimal_schedule(loaded, process)).alias("schedule"),
                pl.col("log_snr", "t").cast(pl.Float64),
                pl.col("optimal_loss").cast(pl.Float64).clip(lower_bound=0.0),
                pl.col("stderr").cast(pl.Float64),
                pl.col("estimator").cast(pl.Utf8),
                pl.col("n_data", "n_queries").cast(pl.Int64),
            )
        )
    return pl.concat(frames)


def evaluation(loaded: LoadedSpec, results: Path, runs_table: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for r in loaded.runs:
        d = results / "runs" / r.id
        fd = read_json_if_present(d / "fd_classifier.json")
        nll = read_json_if_present(d / "nll.json")
        rows.append(
            {
                "run_id": r.id,
                "fd_classifier": fd.get("fd_classifier"),
                **_percentiles("fd_classifier", fd.get("bootstrap")),
                "fid": read_json_if_present(d / "fid.json").get("fid"),
                "nll_bpd": nll.get("bpd"),
                "nll_stderr": nll.get("stderr"),
            }
        )
    values = pl.DataFrame(rows, schema=EVALUATION_SCHEMA)
    keep = ["run_id", "process", "kind", "schedule", "weighting", "model", "seed", "monotonic"]
    return runs_table.select(keep).join(values, on="run_id", how="left")


EVALUATION_SCHEMA = {
    "run_id": pl.Utf8,
    "fd_classifier": pl.Float64,
    "fd_classifier_lo": pl.Float64,
    "fd_classifier_hi": pl.Float64,
    "fid": pl.Float64,
    "nll_bpd": pl.Float64,
    "nll_stderr": pl.Float64,
}


def _percentiles(metric: str, replicates: list[float] | None) -> dict[str, float | None]:
    """The run's 95% bootstrap interval over samples (None without replicates)."""
    if not replicates:
        return {f"{metric}_lo": None, f"{metric}_hi": None}
    lo, hi = np.percentile(np.asarray(replicates, dtype=float), [2.5, 97.5])
    return {f"{metric}_lo": float(lo), f"{metric}_hi": float(hi)}


def job_runtimes(loaded: LoadedSpec, results: Path) -> dict[str, list[dict]]:
    """Per compute stage, the runtime records (device, threads, versions) its jobs wrote."""
    files = {"train": "runtime.json", "fd_classifier": "fd_classifier.json", "nll": "nll.json"}
    return {
        stage: [
            read_json_if_present(results / "runs" / r.id / name).get("runtime") for r in loaded.runs
        ]
        for stage, name in files.items()
    }


def gap(
    loaded: LoadedSpec, results: Path, runs_table: pl.DataFrame, optimal: pl.DataFrame
) -> pl.DataFrame:
    """Per run and log-SNR bin centre: model error (EMA model, training data) minus optimal loss."""
    frames = []
    for r in runs_table.iter_rows(named=True):
        bins = _read_csv(results / "runs" / r["run_id"] / "eval_bins.csv", r["run_id"])
        opt = optimal.filter(
            (pl.col("dataset") == r["dataset"]) & (pl.col("process") == r["kind"])
        ).sort("log_snr")
        lam = bins["log_snr"].to_numpy().astype(float)
        reference = scales.interpolate_optimal(
            lam, opt["log_snr"].to_numpy(), opt["optimal_loss"].to_numpy(), r["kind"]
        )
        frames.append(
            pl.DataFrame(
                {
                    "run_id": r["run_id"],
                    "kind": r["kind"],
                    "schedule": r["schedule"],
                    "weighting": r["weighting"],
                    "log_snr": lam,
                    "model_loss": bins["error"].cast(pl.Float64).to_numpy(),
                    "model_stderr": bins["stderr"].cast(pl.Float64).to_numpy(),
                    "optimal_loss": reference,
                }
            )
        )
    return with_x0_scale(
        pl.concat(frames).with_columns((pl.col("model_loss") - pl.col("optimal_loss")).alias("gap"))
    )


def with_x0_scale(gap: pl.DataFrame) -> pl.DataFrame:
    """The gap table's columns also in the unified VE / x0 scale (diffobj.objectives.scales): sigma_ve,
    model_loss_x0, optimal_loss_x0, gap_x0 (Gaussian runs; null for masked runs, whose
    cross-entropy has one scale)."""
    lam = gap["log_snr"].to_numpy()
    columns = {
        "sigma_ve": scales.sigma_ve(lam),
        **{
            f"{name}_x0": scales.eps_to_x0(gap[name].to_numpy(), lam)
            for name in ("model_loss", "optimal_loss", "gap")
        },
    }
    continuous = pl.col("kind").is_in([k for k in processes.KINDS if processes.get(k).continuous])
    return gap.with_columns(
        pl.when(continuous).then(pl.Series(name, values)).otherwise(None).alias(name)
        for name, values in columns.items()
    )
