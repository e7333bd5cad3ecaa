"""diffobj validate SPEC: check a spec and list its runs (or write its JSON schema).

It prints where the spec's relative paths start, the library files it read and the dataset
files it found, and refuses a dataset path that does not exist, as the workflow would."""

from __future__ import annotations

import argparse
import json

from diffobj import spec
from diffobj.io import atomic_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", default="config/config.yaml", help="experiment YAML")
    parser.add_argument(
        "--schema", metavar="OUT", help="write the spec's JSON schema to OUT and exit"
    )
    parser.add_argument(
        "--run-config",
        nargs=2,
        metavar=("RUN_ID", "OUT"),
        help="write the resolved config of one run to OUT",
    )


def run(args: argparse.Namespace) -> None:
    if args.schema:
        with atomic_path(args.schema) as tmp:
            tmp.write_text(json.dumps(spec.json_schema(), indent=2) + "\n")
        return
    loaded = spec.load(args.spec)
    if args.run_config:
        from diffobj.run_config import dump_run_config

        run_id, out = args.run_config
        with atomic_path(out) as tmp:
            tmp.write_text(dump_run_config(loaded.run(run_id).resolved()))
        return
    spec.check_files(loaded)  # first: cheap, and what a user fixes first
    n_schedules, n_weightings = spec.check_libraries(loaded)
    print(f"{args.spec}: experiment {loaded.experiment!r}, {len(loaded.runs)} runs")
    print(f"  paths relative to {loaded.base}")
    for what, path in loaded.libraries.items():
        print(f"  {what} library: {path}")
    print(f"  libraries: {n_schedules} schedules and {n_weightings} weightings check out")
    for name in spec.dataset_paths(loaded):
        print(f"  datasets.{name}.path: {loaded.resolve(loaded.spec.datasets[name].path)}")
    for r in loaded.runs:
        print(f"  {r.id}")
