"""diffobj prepare-data: a dataset in a released format -> images.npy / labels.npy / meta.json.

Layout and split rule: ``diffobj.data.prepare``. Examples::

    diffobj prepare-data --source sklearn_digits --pad 4 --out results/demo/data/digits
    diffobj prepare-data --source mnist_idx --path /usr/share/datasets/fashion-mnist --pad 2 --out D
    diffobj prepare-data --source cifar10 --path cifar-10-python.tar.gz --out D
"""

from __future__ import annotations

import argparse

from diffobj.data import SOURCES, prepare
from diffobj.data.prepare import RESIZE_FILTERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=SOURCES, help="format of the input")
    parser.add_argument(
        "--path", help="file or folder of the input (not needed for sklearn_digits)"
    )
    parser.add_argument("--name", help="dataset name recorded in meta.json (default: the source)")
    parser.add_argument("--resolution", type=int, help="resize to RES x RES after padding")
    parser.add_argument("--pad", type=int, default=0, help="zero pixels added on each side")
    parser.add_argument(
        "--resize-filter",
        default="lanczos",
        choices=RESIZE_FILTERS,
        help="PIL filter used by --resolution (default lanczos)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        help="hold out this fraction of all images at random instead of the source's "
        "own split (default: the source's split, or 0.2 if it has none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> None:
    meta = prepare(
        args.source,
        args.out,
        path=args.path,
        name=args.name,
        resolution=args.resolution,
        pad=args.pad,
        resize_filter=args.resize_filter,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    split = meta["split"]
    print(
        f"{args.out}: {meta['count']} train + {split['test_count']} test images, "
        f"{meta['resolution']}x{meta['resolution']}x{meta['channels']}, split {split['rule']}"
    )
