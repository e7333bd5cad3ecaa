"""The weighting study read off the tables: intervals over seeds, paired comparisons corrected
for multiplicity, the papers' claims decided, the report text.

A configuration is one (process, schedule, weighting, model) of the grid, trained with several
seeds. The seed is the unit of replication (``diffobj.analysis.inference``): a configuration's interval is
the t-interval of its per-seed values on k - 1 degrees of freedom, so the within-run noise (which
samples were scored, which test images were bounded) is counted once, inside each seed's value.

Two configurations trained with the same seeds share that seed's data order, training noise where
their densities allow, and sampler noise (the sampler is seeded from the run's seed): they are
compared by the paired t-test of their per-seed differences. A table's comparisons form one
family and the papers' claims (``PAPER_CLAIMS``) another; each family's p-values are adjusted by
Holm's method, and a sentence appears in the report only where the adjusted p is at most 0.05.
An unresolved claim comes with the smallest difference its design detects at 80% power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from diffobj.analysis import inference

MIN_SEEDS = 2  # one seed holds no training variation: no interval, no test
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


# Shi & Titsias (2511.19664), masked diffusion on ImageNet 64 (docs/science.md): FID of
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
    # Xu et al. (2506.13763) §5: the optimal-loss weighting and schedule against each base
    # objective, compared on the base's own schedule (the test pairs them on it)
    Claim("gaussian", "sample_quality", "xu_optimal", "edm", _XU + " (EDM 1.79 -> 1.75)"),
    Claim("gaussian", "sample_quality", "xu_optimal", "fm", _XU + " (FM 2.07 -> 1.77)"),
)


def configurations(evaluation: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: seeds, and per metric its mean over seeds and the 95%
    t-interval of that mean (none from one seed; clipped at 0, where every metric lies)."""
    rows = []
    for key, group in evaluation.sort([*CONFIG_KEYS, "seed"]).group_by(
        CONFIG_KEYS, maintain_order=True
    ):
        row: dict[str, Any] = dict(zip(CONFIG_KEYS, key, strict=True))
        row["monotonic"] = bool(group["monotonic"].all())
        row["n_seeds"] = group.height
        for metric in METRICS:
            values = group[metric].to_numpy()
            if group[metric].is_null().any():
                row |= {metric: None, f"{metric}_lo": None, f"{metric}_hi": None}
                continue
            lo, hi = inference.mean_interval(values)
            row |= {
                metric: float(values.mean()),
                f"{metric}_lo": None if np.isnan(lo) else max(float(lo), 0.0),
                f"{metric}_hi": None if np.isnan(hi) else float(hi),
            }
        rows.append(row)
    return pl.DataFrame(rows, schema=study_schema(), orient="row")


def study_schema() -> dict[str, Any]:
    schema: dict[str, Any] = {k: pl.Utf8 for k in CONFIG_KEYS}
    schema |= {"monotonic": pl.Boolean, "n_seeds": pl.Int64}
    for metric in METRICS:
        schema |= {metric: pl.Float64, f"{metric}_lo": pl.Float64, f"{metric}_hi": pl.Float64}
    return schema


def quality_metric(frame: pl.DataFrame) -> str | None:
    """FID where it was computed, else the classifier FD."""
    for metric in ("fid", "fd_classifier"):
        if metric in frame.columns and frame[metric].is_not_null().any():
            return metric
    return None


def paired(evaluation: pl.DataFrame, a: Mapping[str, str], b: Mapping[str, str], metric: str):
    """Per-seed differences a - b of ``metric`` over the seeds both configurations ran."""

    def side(config: Mapping[str, str]) -> pl.DataFrame:
        match = pl.all_horizontal(pl.col(k) == v for k, v in config.items())
        return evaluation.filter(match & pl.col(metric).is_not_null()).select("seed", metric)

    joined = side(a).join(side(b), on="seed", suffix="_b").sort("seed")
    return (joined[metric] - joined[f"{metric}_b"]).to_numpy()


def _test(differences: np.ndarray) -> dict[str, Any]:
    """Effect, 95% interval, raw p and the differences' SD of one paired comparison."""
    k = len(differences)
    if k < MIN_SEEDS:
        return {"n_seeds": k, "effect": None, "lo": None, "hi": None, "p": None, "sd": None}
    lo, hi = inference.mean_interval(differences)
    return {
        "n_seeds": k,
        "effect": float(differences.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "p": float(inference.paired_p(differences)),
        "sd": float(differences.std(ddof=1)),
    }


def _adjust(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm-adjusted p over the tested rows of one family; the detectable difference (80% power)
    at alpha / m, the first step of Holm's method, which a rejection at that size always passes."""
    tested = [r for r in rows if r["p"] is not None]
    adjusted = inference.holm(np.array([r["p"] for r in tested])) if tested else []
    for r, p in zip(tested, adjusted, strict=True):
        r["p_holm"] = float(p)
        r["mdd"] = inference.detectable_difference(
            r["sd"], r["n_seeds"], inference.ALPHA / len(tested)
        )
    for r in rows:
        r.setdefault("p_holm", None)
        r.setdefault("mdd", None)
    return rows


def comparisons(evaluation: pl.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Every pair of configurations of one process, paired over shared seeds, Holm-adjusted as
    one family. ``effect`` is a - b (negative: a is better, every metric being lower-better)."""
    configs = (
        evaluation.filter(pl.col(metric).is_not_null())
        .select(CONFIG_KEYS)
        .unique(maintain_order=True)
    )
    rows = []
    for a, b in itertools.combinations(configs.iter_rows(named=True), 2):
        if a["kind"] == b["kind"]:
            rows.append({"a": a, "b": b} | _test(paired(evaluation, a, b, metric)))
    return _adjust(rows)


def claims(evaluation: pl.DataFrame) -> list[dict[str, Any]]:
    """The papers' claims that both sides of were run, one test per schedule and model the two
    sides share, Holm-adjusted as one family, each with its verdict."""
    rows = []
    for claim in PAPER_CLAIMS:
        metric = quality_metric(evaluation) if claim.metric == "sample_quality" else claim.metric
        if metric is None:
            continue
        sides = evaluation.filter(pl.col("kind") == claim.kind)
        for schedule, model in _shared(sides, claim, metric):
            better = {"kind": claim.kind, "schedule": schedule, "model": model}
            differences = paired(
                evaluation,
                better | {"weighting": claim.better},
                better | {"weighting": claim.worse},
                metric,
            )
            rows.append(
                {"claim": claim, "metric": metric, "schedule": schedule, "model": model}
                | _test(differences)
            )
    for r in _adjust(rows):
        r["verdict"] = _verdict(r)
    return rows


def _shared(sides: pl.DataFrame, claim: Claim, metric: str) -> list[tuple[str, str]]:
    """(schedule, model) pairs that ran both of a claim's weightings with ``metric``."""
    pairs = []
    for weighting in (claim.better, claim.worse):
        sub = sides.filter((pl.col("weighting") == weighting) & pl.col(metric).is_not_null())
        pairs.append(set(sub.select("schedule", "model").iter_rows()))
    return sorted(pairs[0] & pairs[1])


def _verdict(row: Mapping[str, Any]) -> str:
    if row["p_holm"] is None:
        return f"not resolved (fewer than {MIN_SEEDS} shared seeds)"
    if row["p_holm"] > inference.ALPHA:
        return "not resolved"
    return "supported" if row["effect"] < 0 else "contradicted"


def elbo_gap(gap: pl.DataFrame) -> pl.DataFrame:
    """Per run: the gap to the optimal loss integrated with the ELBO's weight on log-SNR, in
    bits per dimension (Gaussian 1/2 ∫ gap dλ; masked ∫ sigmoid(λ) gap dλ) — the part of the
    training-set ELBO the model could still gain, over the bins' λ range."""
    from diffobj.analysis.scaling import (
        elbo_integral,  # the one ELBO weight on log-SNR, both processes
    )

    rows = []
    for (run_id, kind), sub in gap.group_by(["run_id", "kind"], maintain_order=True):
        integral = elbo_integral(kind, sub["log_snr"].to_numpy(), sub["gap"].to_numpy())
        rows.append({"run_id": run_id, "elbo_gap_bpd": integral / math.log(2)})
    return pl.DataFrame(rows, schema={"run_id": pl.Utf8, "elbo_gap_bpd": pl.Float64})


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _interval(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}]" if lo is not None else f"{value:.3g}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


def _name(r: Mapping[str, Any]) -> str:
    return f"{r['weighting']} ({r['schedule']}, {r['model']})"


def _table_lines(study: pl.DataFrame, metrics: list[str]) -> list[str]:
    head = ["process", "schedule", "weighting", "model", "seeds", *(METRICS[m] for m in metrics)]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in study.iter_rows(named=True):
        cells = [
            r["kind"],
            r["schedule"],
            r["weighting"] + ("" if r["monotonic"] else " †"),
            r["model"],
            str(r["n_seeds"]),
            *(_interval(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for m in metrics),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _comparison_lines(evaluation: pl.DataFrame, metric: str) -> list[str]:
    rows = comparisons(evaluation, metric)
    tested = [r for r in rows if r["p_holm"] is not None]
    found = [r for r in tested if r["p_holm"] <= inference.ALPHA]
    # the blank line makes the pairs a Markdown list (without it they run into the line above)
    out = [f"**{METRICS[metric]}**: {len(tested)} pairs tested, {len(found)} differ:", ""]
    for r in found:
        better, worse = (r["a"], r["b"]) if r["effect"] < 0 else (r["b"], r["a"])
        out.append(
            f"- {better['kind']}: {_name(better)} < {_name(worse)} by {abs(r['effect']):.3g} "
            f"[{min(abs(r['lo']), abs(r['hi'])):.3g}, {max(abs(r['lo']), abs(r['hi'])):.3g}], "
            f"{r['n_seeds']} seeds, Holm p = {_p(r['p_holm'])}"
        )
    return out if found else [*out, "- none"]


def _claim_lines(evaluation: pl.DataFrame) -> list[str]:
    rows = claims(evaluation)
    if not rows:
        return ["- none: the grid holds neither side of any of the papers' pairs"]
    head = "| claim | source | metric | seeds | better − worse [95%] | p | Holm p | MDD (80%) | verdict |"
    out = [head, "|---" * 9 + "|"]
    for r in rows:
        c = r["claim"]
        out.append(
            f"| {c.kind}: {c.better} < {c.worse} ({r['schedule']}, {r['model']}) | {c.source} "
            f"| {METRICS[r['metric']]} | {r['n_seeds']} | {_interval(r['effect'], r['lo'], r['hi'])} "
            f"| {_p(r['p'])} | {_p(r['p_holm'])} | {_num(r['mdd'])} | **{r['verdict']}** |"
        )
    return out


def markdown(
    study: pl.DataFrame,
    evaluation: pl.DataFrame,
    gaps: pl.DataFrame | None,
    runs: pl.DataFrame,
    provenance: Mapping[str, Any],
    fd_real: Mapping[str, float] | None = None,
) -> str:
    """The report: the table, the differences the corrected tests support, the papers' claims
    decided, the gap to the optimal loss per run, and where the numbers came from."""
    metrics = [m for m in METRICS if study[m].is_not_null().any()]
    out = ["# Weighting study", ""]
    out += [
        "Mean over seeds with its 95% t-interval (k − 1 degrees of freedom: the seed is the unit "
        "of replication, and each seed's value carries its own within-run noise). † non-monotone "
        "weighting (not a weighted sum of improved ELBOs). Lower is better in every column.",
        "",
        *_table_lines(study, metrics),
    ]
    for dataset, value in sorted((fd_real or {}).items()):
        out.append(f"\nClassifier FD of held-out real {dataset} images: {value:.3g} (the floor).")
    out += [
        "",
        "## Differences the corrected tests support",
        "",
        "Paired t-tests of the per-seed differences between configurations of one process that "
        f"share at least {MIN_SEEDS} seeds; Holm-adjusted over all pairs of a metric, listed where "
        f"the adjusted p is at most {inference.ALPHA:g}. Pairs not listed are not resolved.",
        "",
    ]
    for metric in metrics:
        out += [*_comparison_lines(evaluation, metric), ""]
    out += [
        "## The papers' orderings on these data",
        "",
        "One paired test per claim and shared schedule/model, Holm-adjusted over the claims; "
        "MDD: the smallest true difference this design detects with 80% power at the first "
        "Holm step (alpha / number of claims), from the observed spread of the differences.",
        "",
        *_claim_lines(evaluation),
    ]
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
    out += ["", "## Provenance", "", "```", *_provenance_lines(provenance), "```", ""]
    return "\n".join(out)


def _provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """One line per record, and a mapping (how each stage's jobs ran) one line per stage, so no
    line holds every stage at once."""
    out = []
    for key, value in provenance.items():
        if not isinstance(value, Mapping):
            out.append(f"{key}: {value}")
            continue
        out.append(f"{key}:")
        for sub, records in value.items():
            text = "; ".join(map(str, records)) if isinstance(records, list) else records
            out.append(f"  {sub}: {text}")
    return out
