"""The weighting study read off the tables: intervals across seeds, orderings, the report text.

A configuration is one (process, schedule, weighting, model) of the grid, trained with several
seeds. Its 95% interval resamples at two levels, as the numbers vary at two levels: seeds
(another training run) and, within a run, the samples scored (classifier FD) or the test images
bounded (NLL). Each draw picks seeds with replacement, then one within-run bootstrap replicate
per picked seed, and averages; the interval is the 2.5 and 97.5 percentiles of those averages.
With two seeds the between-seed spread is estimated from one difference, so the intervals are
the honest minimum, not a guarantee: the report says how many seeds stand behind each row.

An ordering "a < b" is stated only when the two intervals do not overlap. The papers' own claims
(``PAPER_CLAIMS``) are each reported as supported, contradicted (non-overlapping the other way)
or not resolved by these data; nothing else is claimed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

LEVEL = 0.95
DRAWS = 4000
MIN_SEEDS = 2  # an interval from one seed holds no training variation: no ordering from it
CONFIG_KEYS = ["kind", "schedule", "weighting", "model"]
METRICS = {"fd_classifier": "classifier FD", "fid": "FID", "nll_bpd": "NLL (bits/dim)"}


@dataclass(frozen=True)
class Claim:
    """A paper's ordering: ``better`` beats ``worse`` on ``metric`` for process ``kind``."""

    kind: str
    metric: str
    better: str
    worse: str
    source: str


# Shi & Titsias (2511.19664), masked diffusion on ImageNet 64 (SCIENCE.md §4.1): FID of
# ELBO 6.84, simple 2.96, EDM 4.42, IDDPM 11.14; sigmoid and FM "significantly improve".
_ST = "Shi & Titsias 2025, ImageNet 64 FID"
_XU = "Xu et al. 2025, CIFAR-10 FID"
PAPER_CLAIMS = (
    Claim("masked", "sample_quality", "simple", "elbo", _ST),
    Claim("masked", "sample_quality", "sigmoid", "elbo", _ST),
    Claim("masked", "sample_quality", "fm", "elbo", _ST),
    Claim("masked", "sample_quality", "edm", "elbo", _ST),
    Claim("masked", "sample_quality", "elbo", "iddpm", _ST),
    Claim("masked", "sample_quality", "simple", "edm", _ST),
    # Xu et al. (2506.13763) §5, SCIENCE.md §4.2: the optimal-loss weighting and schedule
    # against each base objective, compared on the base's own schedule (the verdict joins on it)
    Claim("gaussian", "sample_quality", "xu_optimal", "edm", _XU + " (EDM 1.79 -> 1.75)"),
    Claim("gaussian", "sample_quality", "xu_optimal", "fm", _XU + " (FM 2.07 -> 1.77)"),
)


def bootstrap_means(values: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``replicates`` resamples of ``values`` with replacement."""
    idx = rng.integers(0, len(values), size=(replicates, len(values)))
    return values[idx].mean(axis=1)


def centred(replicates: np.ndarray, estimate: float) -> np.ndarray:
    """The replicates shifted so that their mean is the run's own estimate (bias-corrected)."""
    replicates = np.asarray(replicates, dtype=float)
    return replicates - (replicates.mean() - estimate)


def two_level_interval(
    per_seed: Sequence[np.ndarray], rng: np.random.Generator, draws: int = DRAWS
) -> tuple[float, float]:
    """The interval of the mean over seeds: resample seeds, then one within-run replicate each."""
    k = len(per_seed)
    replicates = [np.asarray(r, dtype=float) for r in per_seed]
    picks = rng.integers(0, k, size=(draws, k))
    values = np.empty((draws, k))
    for s, reps in enumerate(replicates):
        chosen = picks == s
        values[chosen] = reps[rng.integers(0, len(reps), size=int(chosen.sum()))]
    means = values.mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def configurations(
    evaluation: pl.DataFrame, replicates: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0
) -> pl.DataFrame:
    """One row per configuration: seeds, and per metric its mean over seeds and 95% interval.

    ``replicates[metric][run_id]`` are that run's within-run bootstrap replicates of the metric
    (a run without them contributes its value alone: seed variation only).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in evaluation.sort([*CONFIG_KEYS, "seed"]).group_by(
        CONFIG_KEYS, maintain_order=True
    ):
        row: dict[str, Any] = dict(zip(CONFIG_KEYS, key, strict=True))
        row["monotonic"] = bool(group["monotonic"].all())
        row["n_seeds"] = group.height
        for metric in METRICS:
            values = group[metric].to_list()
            if any(v is None for v in values):
                row |= {metric: None, f"{metric}_lo": None, f"{metric}_hi": None}
                continue
            per_seed = [
                centred(replicates.get(metric, {}).get(run_id, np.array([v])), v)
                for run_id, v in zip(group["run_id"], values, strict=True)
            ]
            lo, hi = two_level_interval(per_seed, rng)
            row |= {metric: float(np.mean(values)), f"{metric}_lo": lo, f"{metric}_hi": hi}
        rows.append(row)
    return pl.DataFrame(rows, schema=study_schema(), orient="row")


def study_schema() -> dict[str, Any]:
    schema: dict[str, Any] = {k: pl.Utf8 for k in CONFIG_KEYS}
    schema |= {"monotonic": pl.Boolean, "n_seeds": pl.Int64}
    for metric in METRICS:
        schema |= {metric: pl.Float64, f"{metric}_lo": pl.Float64, f"{metric}_hi": pl.Float64}
    return schema


def quality_metric(study: pl.DataFrame) -> str | None:
    """FID where it was computed, else the classifier FD."""
    for metric in ("fid", "fd_classifier"):
        if study[metric].is_not_null().any():
            return metric
    return None


def orderings(study: pl.DataFrame, metric: str) -> list[tuple[dict, dict]]:
    """(better, worse) pairs of configurations of one process whose intervals do not overlap,
    among those trained with at least ``MIN_SEEDS`` seeds."""
    rows = [
        r
        for r in study.iter_rows(named=True)
        if r[metric] is not None and r["n_seeds"] >= MIN_SEEDS
    ]
    return [
        (a, b)
        for a in rows
        for b in rows
        if a["kind"] == b["kind"] and a is not b and a[f"{metric}_hi"] < b[f"{metric}_lo"]
    ]


def verdict(study: pl.DataFrame, claim: Claim) -> str | None:
    """'supported', 'contradicted' or 'not resolved' for a claim; None if a side was not run."""
    metric = quality_metric(study) if claim.metric == "sample_quality" else claim.metric
    if metric is None:
        return None
    sides = []
    for weighting in (claim.better, claim.worse):
        sub = study.filter((pl.col("kind") == claim.kind) & (pl.col("weighting") == weighting))
        if sub.is_empty() or sub[metric].is_null().any():
            return None
        sides.append(sub)
    better, worse = sides
    # every schedule / model the two share must agree for a verdict
    joined = better.join(worse, on=["schedule", "model"], suffix="_w")
    if joined.is_empty():
        return None
    if min(joined["n_seeds"].min(), joined["n_seeds_w"].min()) < MIN_SEEDS:
        return f"not resolved (fewer than {MIN_SEEDS} seeds)"
    if (joined[f"{metric}_hi"] < joined[f"{metric}_lo_w"]).all():
        return "supported"
    if (joined[f"{metric}_lo"] > joined[f"{metric}_hi_w"]).all():
        return "contradicted"
    return "not resolved"


def elbo_gap(gap: pl.DataFrame) -> pl.DataFrame:
    """Per run: the gap to the optimal loss integrated with the ELBO's weight on log-SNR, in
    bits per dimension (Gaussian 1/2 ∫ gap dλ; masked ∫ sigmoid(λ) gap dλ, SCIENCE §1.2) — the
    part of the training-set ELBO the model could still gain, over the bins' λ range."""
    from diffobj.scaling import elbo_integral  # the one ELBO weight on log-SNR, both processes

    rows = []
    for (run_id, kind), sub in gap.group_by(["run_id", "kind"], maintain_order=True):
        integral = elbo_integral(kind, sub["log_snr"].to_numpy(), sub["gap"].to_numpy())
        rows.append({"run_id": run_id, "elbo_gap_bpd": integral / math.log(2)})
    return pl.DataFrame(rows, schema={"run_id": pl.Utf8, "elbo_gap_bpd": pl.Float64})


def _fmt(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}]" if lo is not None else f"{value:.3g}"


def _name(r: Mapping[str, Any]) -> str:
    return f"{r['weighting']} ({r['schedule']}, {r['model']})"


def markdown(
    study: pl.DataFrame,
    gaps: pl.DataFrame | None,
    runs: pl.DataFrame,
    provenance: Mapping[str, Any],
    fd_real: Mapping[str, float] | None = None,
) -> str:
    """The report: the table, what holds, what the papers claim and whether it holds, the gap
    to the optimal loss per run, and where the numbers came from. Every sentence is computed."""
    metrics = [m for m in METRICS if study[m].is_not_null().any()]
    out = ["# Weighting study", ""]
    out += [
        "Mean over seeds with 95% intervals (two-level bootstrap: seeds, then the scored samples "
        "or the test images within a run). † non-monotone weighting (not a weighted sum of "
        "improved ELBOs). Lower is better in every column.",
        "",
    ]
    head = ["process", "schedule", "weighting", "model", "seeds", *(METRICS[m] for m in metrics)]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in study.iter_rows(named=True):
        cells = [
            r["kind"],
            r["schedule"],
            r["weighting"] + ("" if r["monotonic"] else " †"),
            r["model"],
            str(r["n_seeds"]),
            *(_fmt(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for m in metrics),
        ]
        out.append("| " + " | ".join(cells) + " |")
    for dataset, value in sorted((fd_real or {}).items()):
        out.append(f"\nClassifier FD of held-out real {dataset} images: {value:.3g} (the floor).")
    out += [
        "",
        "## Orderings with non-overlapping intervals",
        "",
        f"Among configurations with at least {MIN_SEEDS} seeds; pairs not listed overlap.",
        "",
    ]
    for metric in metrics:
        pairs = orderings(study, metric)
        out.append(f"**{METRICS[metric]}** ({len(pairs)} pairs):")
        out += [f"- {a['kind']}: {_name(a)} < {_name(b)}" for a, b in pairs] or ["- none"]
        out.append("")
    out += ["## The papers' orderings on these data", ""]
    judged = [(claim, verdict(study, claim)) for claim in PAPER_CLAIMS]
    judged = [(claim, result) for claim, result in judged if result is not None]
    out += [
        f"- {claim.kind}: {claim.better} better than {claim.worse} ({claim.source}): **{result}**"
        for claim, result in judged
    ] or ["- none: the grid holds neither side of any of the papers' pairs"]
    if gaps is not None and not gaps.is_empty():
        out += ["", "## Gap to the optimal loss", ""]
        out.append(
            "ELBO-weighted integral of (model loss − optimal loss) over the evaluated log-SNR "
            "bins, on training images, bits/dim (what the model could still gain on the "
            "training-set bound):"
        )
        out += ["", "| run | gap (bits/dim) |", "|---|---|"]
        for r in gaps.join(runs.select("run_id"), on="run_id").sort("run_id").iter_rows(named=True):
            out.append(f"| {r['run_id']} | {r['elbo_gap_bpd']:.3g} |")
    out += ["", "## Provenance", "", "```"]
    out += [f"{k}: {v}" for k, v in provenance.items()]
    out += ["```", ""]
    return "\n".join(out)
