"""The result tables: polars frames, each with a pandera schema, validated eagerly, written
atomically as parquet. A table that fails its schema is never written; the error names the
table, the column, the check and the failing rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from diffobj import processes
from diffobj.errors import UserError
from diffobj.io import atomic_path
from diffobj.provenance import PARQUET_KEY, as_text

PROCESS_KINDS = list(processes.KINDS)


class Runs(pa.DataFrameModel):
    """The expanded grid: one row per training run."""

    run_id: str = pa.Field(unique=True)
    dataset: str
    process: str
    kind: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    weighting: str
    model: str
    seed: int = pa.Field(ge=0)
    monotonic: bool

    class Config:
        strict = True


class Weightings(pa.DataFrameModel):
    """w(lam) and the total weight on the per-time loss, on a grid of each schedule's times."""

    weighting: str
    schedule: str
    process: str = pa.Field(isin=PROCESS_KINDS)
    t: float = pa.Field(ge=0, le=1)
    log_snr: float
    weight: float
    total_weight: float
    monotonic: bool

    class Config:
        strict = True


class TrainingLog(pa.DataFrameModel):
    """Scalar training curves, one row per logged step."""

    run_id: str
    step: int = pa.Field(ge=0)
    images_seen: int = pa.Field(ge=0)
    loss: float
    grad_norm: float = pa.Field(ge=0)
    lr: float = pa.Field(ge=0)
    images_per_s: float = pa.Field(ge=0)
    peak_mem_mb: float = pa.Field(ge=0)


class Training(pa.DataFrameModel):
    """Training error per fixed log-SNR bin over steps (eps-MSE or masked CE per dimension)."""

    run_id: str
    step: int = pa.Field(ge=0)
    log_snr: float
    error: float = pa.Field(ge=0)
    count: int = pa.Field(ge=0)


class OptimalLoss(pa.DataFrameModel):
    """The irreducible loss per noise level of a dataset and process (same scale as `error`)."""

    dataset: str
    process: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    log_snr: float
    t: float = pa.Field(ge=0, le=1)
    optimal_loss: float = pa.Field(ge=0)
    stderr: float = pa.Field(ge=0)
    estimator: str
    n_data: int = pa.Field(gt=0)
    n_queries: int = pa.Field(gt=0)


class Evaluation(pa.DataFrameModel):
    """Per run: sample quality and likelihood, with standard errors."""

    run_id: str = pa.Field(unique=True)
    process: str
    kind: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    weighting: str
    model: str
    seed: int
    monotonic: bool
    fd_classifier: float = pa.Field(ge=0, nullable=True)
    fd_classifier_lo: float = pa.Field(ge=0, nullable=True)  # bootstrap over samples, 95%
    fd_classifier_hi: float = pa.Field(ge=0, nullable=True)
    fid: float = pa.Field(ge=0, nullable=True)
    nll_bpd: float = pa.Field(ge=0, nullable=True)
    nll_stderr: float = pa.Field(ge=0, nullable=True)


class Study(pa.DataFrameModel):
    """Per configuration (process, schedule, weighting, model): mean over seeds and its 95%
    t-interval on n_seeds - 1 degrees of freedom (``diffobj.analysis.study``) of each metric; the interval
    is null for one seed."""

    kind: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    weighting: str
    model: str
    monotonic: bool
    n_seeds: int = pa.Field(gt=0)
    fd_classifier: float = pa.Field(ge=0, nullable=True)
    fd_classifier_lo: float = pa.Field(ge=0, nullable=True)
    fd_classifier_hi: float = pa.Field(ge=0, nullable=True)
    fid: float = pa.Field(ge=0, nullable=True)
    fid_lo: float = pa.Field(ge=0, nullable=True)
    fid_hi: float = pa.Field(ge=0, nullable=True)
    nll_bpd: float = pa.Field(ge=0, nullable=True)
    nll_bpd_lo: float = pa.Field(ge=0, nullable=True)
    nll_bpd_hi: float = pa.Field(ge=0, nullable=True)

    class Config:
        strict = True


class Gap(pa.DataFrameModel):
    """Model loss minus optimal loss, per run and log-SNR bin centre."""

    run_id: str
    kind: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    weighting: str
    log_snr: float
    model_loss: float = pa.Field(ge=0)
    model_stderr: float = pa.Field(ge=0)
    optimal_loss: float = pa.Field(ge=0)
    gap: float
    # the unified VE / x0 scale (diffobj.objectives.scales); null for masked runs
    sigma_ve: float = pa.Field(gt=0, nullable=True)
    model_loss_x0: float = pa.Field(ge=0, nullable=True)
    optimal_loss_x0: float = pa.Field(ge=0, nullable=True)
    gap_x0: float = pa.Field(nullable=True)


class Bounds(pa.DataFrameModel):
    """The cascade of improved bounds per run and cut t(i) (nats per dimension, i = 0: ELBO),
    with the run's cut weights and the cumulative-weight identity (``diffobj.objectives.bounds``)."""

    run_id: str
    kind: str = pa.Field(isin=PROCESS_KINDS)
    schedule: str
    weighting: str
    i: int = pa.Field(ge=0)
    t: float = pa.Field(ge=0, le=1)
    log_snr: float
    bound: float = pa.Field(ge=0)
    bound_stderr: float = pa.Field(ge=0)
    model_term: float = pa.Field(ge=0)
    model_stderr: float = pa.Field(ge=0)
    decoder_term: float = pa.Field(ge=0)
    decoder_stderr: float = pa.Field(ge=0)
    prior: float = pa.Field(ge=0)
    cut_weight: float
    weighted_bound_sum: float
    constant: float
    reweighted_loss: float
    monotone: bool


SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "runs": Runs,
    "weightings": Weightings,
    "training_log": TrainingLog,
    "training": Training,
    "optimal_loss": OptimalLoss,
    "evaluation": Evaluation,
    "study": Study,
    "gap": Gap,
    "bounds": Bounds,
}


def validate(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Validate eagerly (a LazyFrame would skip the data checks); errors name table, column, rows."""
    schema = SCHEMAS[name]
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    try:
        return schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        raise UserError(
            f"table {name!r} fails its schema:\n{_describe(err.failure_cases)}"
        ) from None
    except SchemaError as err:
        raise UserError(f"table {name!r} fails its schema: {err}") from None


def _describe(failures: pl.DataFrame) -> str:
    lines = []
    for (column, check), group in failures.group_by(["column", "check"], maintain_order=True):
        rows = [i for i in group["index"].to_list() if i is not None][:10]
        values = group["failure_case"].to_list()[:5]
        lines.append(f"  column {column!r}, check {check}: rows {rows}, values {values}")
    return "\n".join(lines)


def write(
    name: str, frame: pl.DataFrame, path: str | Path, provenance: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Validate, then write parquet atomically; nothing is written if validation fails.
    ``provenance`` goes into the file's key-value metadata (``read_provenance`` reads it)."""
    frame = validate(name, frame)
    metadata = {PARQUET_KEY: as_text(provenance)} if provenance is not None else None
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, metadata=metadata)
    return frame


def read(name: str, path: str | Path) -> pl.DataFrame:
    return validate(name, pl.read_parquet(path))


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    text = pl.read_parquet_metadata(path).get(PARQUET_KEY)
    return json.loads(text) if text is not None else None
