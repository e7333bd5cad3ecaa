"""Experiments side by side: each configuration's metrics in every experiment, and the
difference of each experiment to the first, paired over the seeds both ran.

A configuration is (dataset, process, schedule, weighting, model). The seed is the unit of
replication (diffobj.analysis.inference): the difference of two experiments is the mean of the per-seed
differences over their common seeds, with its t-interval and paired p; Holm's method runs over
every difference in the table. Seeds that only one experiment ran enter its mean, not the
difference.

A Fréchet distance depends on the features and on the number of samples scored (its bias falls
like 1/n), so two experiments' FDs are compared only where every run of the configuration was
scored with the same features and the same n; otherwise the row says which differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from diffobj.analysis import inference
from diffobj.errors import UserError
from diffobj.io import read_json_if_present

CONFIG = ["dataset", "process", "schedule", "weighting", "model"]
METRICS = {"fd_classifier": "fd_classifier.json", "fid": "fid.json", "nll_bpd": "nll.json"}
SCORED_BY = {"fd_classifier": ("feature", "n"), "fid": ("feature", "n"), "nll_bpd": ("n",)}


def per_seed(results: str | Path) -> pl.DataFrame:
    """One experiment's per-run metrics, one row per run, with what each metric was scored by."""
    results = Path(results)
    tables = results / "tables"
    for name in ("runs", "evaluation"):
        if not (tables / f"{name}.parquet").is_file():
            raise UserError(
                f"{tables / name}.parquet: not found; run the experiment's DAG first "
                "(a results folder is results/<experiment>)"
            )
    runs = pl.read_parquet(tables / "runs.parquet").select("run_id", *CONFIG, "seed")
    values = pl.read_parquet(tables / "evaluation.parquet").select("run_id", *METRICS)
    scored = pl.DataFrame(
        [scored_by(results / "runs" / run_id) for run_id in runs["run_id"]],
        schema={f"{m}_by": pl.Utf8 for m in METRICS},
    )
    return runs.hstack(scored).join(values, on="run_id", how="left")


def scored_by(run_dir: Path) -> dict[str, str | None]:
    """Per metric, the settings its value depends on besides the model (features, n)."""
    out = {}
    for metric, file in METRICS.items():
        info = read_json_if_present(run_dir / file)
        keys = SCORED_BY[metric]
        out[f"{metric}_by"] = ", ".join(f"{k} {info.get(k)}" for k in keys) if info else None
    return out


def compare(experiments: Sequence[str | Path]) -> pl.DataFrame:
    """The comparison table of ``experiments`` (results/<name> folders; the first is the base)."""
    if len(experiments) < 2:
        raise UserError("compare needs at least two results folders")
    names = [Path(e).name for e in experiments]
    if len(set(names)) < len(names):  # the same experiment from two places: name them by path
        names = [str(e) for e in experiments]
    if len(set(names)) < len(names):
        raise UserError(f"a results folder is given twice: {names}")
    frames = {name: per_seed(path) for name, path in zip(names, experiments, strict=True)}
    base, others = names[0], names[1:]
    rows = []
    for key in shared_configs(frames):
        for metric in METRICS:
            a = _select(frames[base], key, metric)
            for other in others:
                b = _select(frames[other], key, metric)
                if a.height or b.height:  # a metric neither measured is left out
                    rows.append({**key, "metric": metric, **difference(a, b, base, other)})
    table = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return with_holm(table)


SCHEMA = {
    **{c: pl.Utf8 for c in CONFIG},
    "metric": pl.Utf8,
    "base": pl.Utf8,
    "other": pl.Utf8,
    "seeds_base": pl.Int64,
    "seeds_other": pl.Int64,
    "mean_base": pl.Float64,
    "mean_other": pl.Float64,
    "common_seeds": pl.Int64,
    "difference": pl.Float64,
    "difference_lo": pl.Float64,
    "difference_hi": pl.Float64,
    "p": pl.Float64,
    "note": pl.Utf8,
}


def shared_configs(frames: dict[str, pl.DataFrame]) -> list[dict[str, str]]:
    """Configurations that every experiment ran, in the first experiment's order."""
    keys = [frame.select(CONFIG).unique(maintain_order=True) for frame in frames.values()]
    shared = keys[0]
    for other in keys[1:]:
        shared = shared.join(other, on=CONFIG, how="semi", maintain_order="left")
    return shared.to_dicts()


def _select(frame: pl.DataFrame, key: dict[str, str], metric: str) -> pl.DataFrame:
    mask = pl.all_horizontal(pl.col(c) == v for c, v in key.items())
    rows = frame.filter(mask & pl.col(metric).is_not_null())
    return rows.select("seed", pl.col(metric).alias("value"), pl.col(f"{metric}_by").alias("by"))


def difference(a: pl.DataFrame, b: pl.DataFrame, base: str, other: str) -> dict:
    """other − base over their common seeds; a note where the two are not comparable."""
    row = {
        "base": base,
        "other": other,
        "seeds_base": a.height,
        "seeds_other": b.height,
        "mean_base": a["value"].mean() if a.height else None,
        "mean_other": b["value"].mean() if b.height else None,
    }
    pairs = a.join(b, on="seed", suffix="_other").sort("seed")
    blank = {"common_seeds": pairs.height, "difference": None, "difference_lo": None}
    blank |= {"difference_hi": None, "p": None}
    by = set(a["by"].to_list()) | set(b["by"].to_list())
    if not a.height or not b.height:
        return row | blank | {"note": "not measured in both"}
    if len(by) > 1:
        return row | blank | {"note": "scored differently: " + " vs ".join(sorted(map(str, by)))}
    if pairs.height < 2:
        return row | blank | {"note": f"{pairs.height} common seed(s); a difference needs 2"}
    d = (pairs["value_other"] - pairs["value"]).to_numpy()
    lo, hi = inference.mean_interval(d)
    return row | {
        "common_seeds": pairs.height,
        "difference": float(d.mean()),
        "difference_lo": float(lo),
        "difference_hi": float(hi),
        "p": float(inference.paired_p(d)),
        "note": "",
    }


def with_holm(table: pl.DataFrame) -> pl.DataFrame:
    """Holm-adjusted p over every difference of the table (rows without one stay null)."""
    p = table["p"].to_numpy(allow_copy=True).astype(float)
    tested = ~np.isnan(p)
    adjusted = np.full(len(p), np.nan)
    if tested.any():
        adjusted[tested] = inference.holm(p[tested])
    return table.with_columns(pl.Series("holm_p", adjusted).fill_nan(None))


def to_markdown(table: pl.DataFrame) -> str:
    """The table for a reader: one line per configuration, metric and experiment pair."""
    head = (
        "| "
        + " | ".join(
            [
                *CONFIG,
                "metric",
                "base",
                "other",
                "seeds",
                "mean base → other: difference [95%]",
                "Holm p",
                "note",
            ]
        )
        + " |"
    )
    lines = [head, "|" + "---|" * (len(CONFIG) + 7)]
    for r in table.iter_rows(named=True):
        diff = (
            f"{r['difference']:.4g} [{r['difference_lo']:.4g}, {r['difference_hi']:.4g}]"
            if r["difference"] is not None
            else "—"
        )
        means = f"{_fmt(r['mean_base'])} → {_fmt(r['mean_other'])}"
        holm = _fmt(r["holm_p"])
        cells = [*(r[c] for c in CONFIG), r["metric"], r["base"], r["other"]]
        cells += [
            f"{r['seeds_base']}/{r['seeds_other']} ({r['common_seeds']} common)",
            f"{means}: {diff}",
            holm,
            r["note"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"
