"""The spec: validation errors name file, key and value; the grid expands into stable run ids."""

import subprocess
import sys

import polars as pl
import pytest
import yaml

from diffobj import spec
from diffobj.cli import main
from diffobj.errors import UserError

MINIMAL = {
    "experiment": "mini",
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "processes": {
        "gaussian": {"kind": "gaussian", "log_snr_range": [-10, 10]},
        "masked": {"kind": "masked", "log_snr_range": [-9, 9]},
    },
    "models": {"tiny": {"channels": 8, "channel_mult": [1], "num_blocks": 1}},
    "grid": [
        {
            "dataset": "digits",
            "process": "gaussian",
            "schedule": ["vp_cosine", "rectified_flow"],
            "weighting": ["elbo", "fm"],
            "model": "tiny",
            "seed": [0, 1],
        },
        {
            "dataset": "digits",
            "process": "masked",
            "schedule": "md4_cosine",
            "weighting": ["simple"],
            "model": "tiny",
        },
    ],
}


def write_spec(tmp_path, data, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_spec_runs_both_processes_and_the_arms_of_the_masked_claims(root):
    from diffobj.analysis import study

    loaded = spec.load(root / "config" / "config.yaml", root)
    kinds = {loaded.spec.processes[r.process].kind for r in loaded.runs}
    assert kinds == {"gaussian", "masked"}
    masked = [r for r in loaded.runs if loaded.spec.processes[r.process].kind == "masked"]
    claimed = {(c.better, c.worse) for c in study.PAPER_CLAIMS if c.kind == "masked"}
    for weighting in ("simple", "sigmoid", "fm"):
        assert (weighting, "elbo") in claimed
        seeds = {r.seed for r in masked if r.weighting == weighting}
        assert seeds == {r.seed for r in masked if r.weighting == "elbo"}  # paired
        assert len(seeds) >= 3


def test_grid_expands_into_stable_readable_ids(tmp_path, root):
    loaded = spec.load(write_spec(tmp_path, MINIMAL), root)
    ids = [r.id for r in loaded.runs]
    assert len(ids) == 2 * 2 * 2 + 1
    assert ids[0] == "digits-gaussian-vp_cosine-elbo-tiny-s0"
    assert ids[-1] == "digits-masked-md4_cosine-simple-tiny-s0"
    assert [r.id for r in spec.load(write_spec(tmp_path, MINIMAL, "again.yaml"), root).runs] == ids


def test_resolved_run_config_is_self_contained(tmp_path, root):
    from diffobj.run_config import load_run_config

    loaded = spec.load(write_spec(tmp_path, MINIMAL), root)
    out = tmp_path / "run.yaml"
    assert (
        main(
            ["validate", str(tmp_path / "spec.yaml"), "--run-config", loaded.runs[-1].id, str(out)]
        )
        == 0
    )
    config = load_run_config(out)
    assert config.kind == "masked" and config.weighting.name == "simple"
    assert config.schedule.log_snr_endpoints() == pytest.approx((-9, 9), abs=1e-8)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(colour="red"), "colour: unknown key"),
        (
            lambda d: d["grid"][0].update(weighting=["elbo", "nope"]),
            "grid.0.weighting: unknown weighting 'nope'",
        ),
        (lambda d: d["grid"][1].update(schedule="vp_cosine"), "'vp_cosine' is a gaussian schedule"),
        (
            lambda d: d["grid"][0].update(weighting=["simple"]),
            "weighting 'simple' is for ['masked']",
        ),
        (
            lambda d: d["processes"]["gaussian"].update(log_snr_range=[5, -5]),
            "processes.gaussian.log_snr_range",
        ),
        (
            lambda d: d.update(weightings={"evil": "__import__('os').system('ls')"}),
            "weightings.evil",
        ),
        (lambda d: d["grid"][0].update(model="huge"), "unknown model 'huge'"),
        (
            lambda d: d["grid"][0].update(training={"stepz": 3}),
            "grid.0.training: unknown key 'stepz'",
        ),
        (
            lambda d: d.update(optimal_loss={"estimator": "cdol"}),
            "optimal_loss: Value error, estimator cdol needs subset",
        ),
        (
            lambda d: d.update(optimal_loss={"estimator": "snis", "subset": 64}),
            "optimal_loss.estimator: snis is for Gaussian processes; the masked process 'masked'",
        ),
    ],
)
def test_bad_specs_fail_naming_file_key_and_value(tmp_path, root, edit, message):
    import copy

    data = copy.deepcopy(MINIMAL)
    edit(data)
    if "evil" in data.get("weightings", {}):
        data["grid"][0]["weighting"] = ["evil"]
    with pytest.raises(UserError) as err:
        spec.load(write_spec(tmp_path, data), root)
    assert message in str(err.value)
    assert "spec.yaml" in str(err.value)


def test_weightings_derived_in_the_spec(tmp_path, root):
    data = {
        **MINIMAL,
        "weightings": {
            "sigmoid_b2": {"from": "sigmoid", "params": {"b": 2}},
            "my_w": "sigmoid(1 - lam)**2",
        },
    }
    data["grid"] = [{**MINIMAL["grid"][0], "weighting": ["sigmoid_b2", "my_w"]}]
    loaded = spec.load(write_spec(tmp_path, data), root)
    assert loaded.weighting("sigmoid_b2").params == {"b": 2.0}
    assert {r.weighting for r in loaded.runs} == {"sigmoid_b2", "my_w"}


def test_cli_exit_code_and_one_clear_line_and_no_output(tmp_path, root):
    data = {**MINIMAL, "grid": [{**MINIMAL["grid"][0], "weighting": ["nope"]}]}
    path = write_spec(tmp_path, data)
    out = tmp_path / "w.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "diffobj.cli", "weightings", "--spec", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown weighting 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".w.parquet*"))


def test_weightings_command_tabulates_a_weighting_added_to_the_yaml(tmp_path, root):
    library = tmp_path / "weightings.yaml"
    library.write_text(
        (root / "config" / "weightings.yaml").read_text() + '\nmy_w: "sigmoid(1 - lam)**2"\n'
    )
    data = {**MINIMAL, "weightings_library": str(library)}
    data["grid"] = [
        {**MINIMAL["grid"][0], "weighting": ["elbo", "my_w", "iddpm"]},
        MINIMAL["grid"][1],
    ]
    path = write_spec(tmp_path, data)
    out, fig = tmp_path / "w.parquet", tmp_path / "w.png"
    assert (
        main(
            [
                "weightings",
                "--spec",
                str(path),
                "--out",
                str(out),
                "--figure",
                str(fig),
                "--points",
                "65",
            ]
        )
        == 0
    )
    table = pl.read_parquet(out)
    mine = table.filter(pl.col("weighting") == "my_w")
    assert mine.height == 2 * 65  # two Gaussian schedules
    lam = mine["log_snr"].to_numpy()
    assert mine["weight"].to_numpy() == pytest.approx(
        1 / (1 + __import__("numpy").exp(lam - 1)) ** 2
    )
    flags = dict(table.select("weighting", "monotonic").unique().iter_rows())
    assert flags == {"elbo": True, "my_w": True, "iddpm": False, "simple": True}
    assert fig.stat().st_size > 0 and fig.with_suffix(".pdf").stat().st_size > 0


def test_committed_json_schema_is_generated_from_the_spec_models(root):
    import json

    committed = json.loads((root / "workflow" / "schemas" / "spec.schema.json").read_text())
    assert committed == spec.json_schema(), (
        "regenerate: diffobj validate --schema workflow/schemas/spec.schema.json"
    )


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("9**9**9**9", "weightings.bad.expr: expression '9**9**9**9': '9**9**9' has the exponent"),
        ("exp(exp(exp(lam)))", "weightings.bad: w = inf at lam = 10 "),
        ("-lam", "weightings.bad: w = -10 < 0 at lam = 10 "),
        ("lam ** 1000000000", "weightings.bad.expr: expression 'lam ** 1000000000': 'lam "),
        ("0 * sigmoid(lam)", "weightings.bad: w = 0 everywhere"),
    ],
)
def test_hostile_weighting_in_the_grid_is_one_line_exit_2(tmp_path, root, capsys, expr, message):
    data = {**MINIMAL, "weightings": {"bad": expr}}
    data["grid"] = [{**MINIMAL["grid"][0], "weighting": ["bad"]}]
    path = write_spec(tmp_path, data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {message}" in err


@pytest.mark.parametrize(
    ("library", "entry", "message"),
    [
        ("weightings", '"-lam"', "weightings.unused: w = -10 < 0 at lam = 10 "),
        ("schedules", "{process: masked, alpha: t}", "schedules.unused: log-SNR must decrease"),
    ],
)
def test_validate_checks_library_entries_no_grid_names(
    tmp_path, root, capsys, library, entry, message
):
    lib = tmp_path / f"{library}.yaml"
    lib.write_text((root / "config" / f"{library}.yaml").read_text() + f"\nunused: {entry}\n")
    path = write_spec(tmp_path, {**MINIMAL, f"{library}_library": str(lib)})
    spec.load(path, root)  # the grid does not use it: the spec itself loads
    assert main(["validate", str(path)]) == 2
    assert f"{lib}: {message}" in capsys.readouterr().err


def test_validate_reports_that_the_libraries_check_out(root, capsys):
    assert main(["validate", str(root / "config" / "config.yaml")]) == 0
    n = {
        k: len(yaml.safe_load((root / "config" / f"{k}.yaml").read_text()))
        for k in ("schedules", "weightings")
    }
    expected = f"libraries: {n['schedules']} schedules and {n['weightings']} weightings check out"
    assert expected in capsys.readouterr().out


def test_resources_default_to_cpu_and_a_stage_keeps_the_defaults_it_omits(tmp_path, root):
    default = spec.load(write_spec(tmp_path, MINIMAL), root).spec.resources
    assert all(getattr(default, stage).gpus == 0 for stage in spec.STAGE_DEFAULTS)
    assert (default.train.mem_mb, default.train.runtime, default.train.threads) == (8000, 60, 1)
    data = {**MINIMAL, "resources": {"train": {"gpus": 2, "threads": 8}}}
    train = spec.load(write_spec(tmp_path, data), root).spec.resources.train
    assert (train.gpus, train.threads, train.mem_mb, train.runtime) == (2, 8, 8000, 60)
    with pytest.raises(UserError, match="resources.trian: unknown key"):
        spec.load(write_spec(tmp_path, {**MINIMAL, "resources": {"trian": {"gpus": 1}}}), root)


def test_commands_joined_by_then_run_in_order_and_stop_at_the_first_failure(tmp_path, root, capsys):
    good = write_spec(tmp_path, MINIMAL)
    assert main(["validate", str(good), "--then", "validate", str(good)]) == 0
    assert capsys.readouterr().out.count("experiment") == 2  # both ran
    missing = tmp_path / "missing.yaml"
    schema = tmp_path / "schema.json"
    argv = ["validate", str(missing), "--then", "validate", "--schema", str(schema)]
    assert main(argv) == 2
    assert str(missing) in capsys.readouterr().err
    assert not schema.exists()  # the failure stopped the chain
