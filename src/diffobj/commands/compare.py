"""diffobj compare: experiments side by side, differences paired over their common seeds."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="+",
        help="results/<experiment> folders whose tables are built; the first is the base",
    )
    parser.add_argument("--out", help="also write the table here (.csv or .parquet)")


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from diffobj.analysis import compare
    from diffobj.errors import UserError
    from diffobj.io import atomic_path

    table = compare.compare(args.results)
    print(compare.to_markdown(table))
    if args.out:
        out = Path(args.out)
        if out.suffix not in (".csv", ".parquet"):
            raise UserError(f"--out {out}: the table is written as .csv or .parquet")
        with atomic_path(out) as tmp:
            if out.suffix == ".csv":
                table.write_csv(tmp)
            else:
                table.write_parquet(tmp)
        print(f"{out}: {table.height} rows")
