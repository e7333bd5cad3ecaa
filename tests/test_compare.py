"""diffobj compare on results folders the test writes: the difference of two experiments is the
mean of the per-seed differences over their common seeds, with the t-interval on k - 1 degrees
of freedom; FDs scored with other features or another n are not compared."""

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from scipy import stats

from diffobj.analysis import compare
from diffobj.errors import UserError

CONFIG = {"dataset": "digits", "process": "masked", "schedule": "md4_cosine", "model": "m"}


def write_experiment(root, name, values, seeds, feature="classifier:aaaa", n=1000):
    """results/<name> with runs/evaluation tables and per-run metric files: values[w][i] is
    weighting w's fd_classifier for seeds[i]; the NLL is the FD / 100."""
    results = root / name
    (results / "tables").mkdir(parents=True)
    runs, evaluation = [], []
    for weighting, per_seed in values.items():
        for seed, value in zip(seeds, per_seed, strict=True):
            run_id = f"{weighting}-s{seed}"
            runs.append({"run_id": run_id, **CONFIG, "weighting": weighting, "seed": seed})
            evaluation.append({"run_id": run_id, "fd_classifier": value, "nll_bpd": value / 100})
            run_dir = results / "runs" / run_id
            run_dir.mkdir(parents=True)
            fd = {"fd_classifier": value, "feature": feature, "n": n}
            (run_dir / "fd_classifier.json").write_text(json.dumps(fd))
            (run_dir / "nll.json").write_text(json.dumps({"bpd": value / 100, "n": 200}))
    pl.DataFrame(runs).write_parquet(results / "tables" / "runs.parquet")
    frame = pl.DataFrame(evaluation).with_columns(pl.lit(None, pl.Float64).alias("fid"))
    frame.write_parquet(results / "tables" / "evaluation.parquet")
    return results


def test_the_difference_is_paired_over_common_seeds(tmp_path):
    base = write_experiment(tmp_path, "base", {"elbo": [10.0, 20.0, 30.0, 40.0]}, [0, 1, 2, 3])
    # seed 3 only in base, seed 4 only in other: 3 common seeds with differences 1, 3, 2
    other = write_experiment(tmp_path, "lr", {"elbo": [11.0, 23.0, 32.0, 99.0]}, [0, 1, 2, 4])
    table = compare.compare([base, other])
    fd = table.filter(pl.col("metric") == "fd_classifier").row(0, named=True)
    d = np.array([1.0, 3.0, 2.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert fd["common_seeds"] == 3 and (fd["seeds_base"], fd["seeds_other"]) == (4, 4)
    assert fd["mean_base"] == 25.0 and fd["mean_other"] == pytest.approx(165 / 4)
    assert fd["difference"] == pytest.approx(2.0)
    assert (fd["difference_lo"], fd["difference_hi"]) == pytest.approx((2 - half, 2 + half))
    assert fd["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    # two tests in the table (FD and NLL, fid measured by neither is left out): Holm doubles
    # the smaller p
    assert set(table["metric"]) == {"fd_classifier", "nll_bpd"}
    assert table["holm_p"].min() == pytest.approx(2 * table["p"].min())


def test_fds_scored_with_other_features_or_another_n_are_not_compared(tmp_path):
    base = write_experiment(tmp_path, "a", {"elbo": [1.0, 2.0]}, [0, 1])
    other = write_experiment(tmp_path, "b", {"elbo": [1.5, 2.5]}, [0, 1], feature="classifier:bbbb")
    fewer = write_experiment(tmp_path, "c", {"elbo": [1.5, 2.5]}, [0, 1], n=500)
    table = compare.compare([base, other, fewer])
    fd = table.filter(pl.col("metric") == "fd_classifier")
    assert fd["difference"].to_list() == [None, None]
    assert "classifier:aaaa" in fd["note"][0] and "classifier:bbbb" in fd["note"][0]
    assert "n 1000" in fd["note"][1] and "n 500" in fd["note"][1]
    nll = table.filter(pl.col("metric") == "nll_bpd")  # the NLL does not depend on the features
    assert nll["difference"].to_list() == pytest.approx([0.005, 0.005])


def test_only_configurations_that_every_experiment_ran_are_compared(tmp_path):
    base = write_experiment(tmp_path, "a", {"elbo": [1.0, 2.0], "fm": [3.0, 4.0]}, [0, 1])
    other = write_experiment(tmp_path, "b", {"fm": [3.0, 5.0], "simple": [1.0, 1.0]}, [0, 1])
    assert set(compare.compare([base, other])["weighting"]) == {"fm"}


def test_a_folder_without_tables_is_refused_with_what_to_do(tmp_path):
    base = write_experiment(tmp_path, "a", {"elbo": [1.0, 2.0]}, [0, 1])
    with pytest.raises(UserError, match=r"missing/tables/runs.parquet: not found; run the"):
        compare.compare([base, tmp_path / "missing"])


def test_the_command_prints_the_table_and_writes_it(tmp_path):
    base = write_experiment(tmp_path, "a", {"elbo": [1.0, 2.0]}, [0, 1])
    other = write_experiment(tmp_path, "b", {"elbo": [2.0, 4.0]}, [0, 1])
    out = tmp_path / "comparison.csv"
    code = "import sys; from diffobj.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "compare", str(base), str(other), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "| digits | masked | md4_cosine | elbo | m | fd_classifier | a | b |" in result.stdout
    assert "1.5 → 3: 1.5 [" in result.stdout
    assert pl.read_csv(out).height == 2
