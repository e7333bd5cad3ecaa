"""diffobj train-features: the small classifier whose features give ``fd_classifier``.

    diffobj train-features --data results/demo/data/digits --out features.pt [--epochs 20]

Trains on DATA/images.npy + labels.npy, reports accuracy on DATA/test/ when it exists.
"""

from __future__ import annotations

import argparse
import time

from diffobj.data import TEST_DIR, load_prepared
from diffobj.devices import resolve_device
from diffobj.metrics import classifier


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="prepared dataset folder (diffobj prepare-data)"
    )
    parser.add_argument("--out", required=True, help="classifier file (.pt)")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation and batch order"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    device = resolve_device(args.device, local_rank=None)
    images, labels, meta = load_prepared(args.data)
    has_test = (Path(args.data) / TEST_DIR / "meta.json").is_file()
    test_images, test_labels, _ = (
        load_prepared(args.data, "test") if has_test else (None, None, None)
    )
    start = time.perf_counter()
    model = classifier.train_classifier(
        images,
        labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
    )
    seconds = time.perf_counter() - start
    test_accuracy = (
        classifier.accuracy(model, test_images, test_labels) if test_labels is not None else None
    )
    classifier.save_classifier(
        model,
        args.out,
        test_accuracy=test_accuracy,
        train_seconds=seconds,
        epochs=args.epochs,
        seed=args.seed,
        data={"path": str(args.data), "name": meta.get("name"), "sha256": meta.get("sha256")},
    )
    accuracy_text = f"{test_accuracy:.4f}" if test_accuracy is not None else "n/a (no test split)"
    print(f"{args.out}: trained in {seconds:.1f} s, test accuracy {accuracy_text}")
