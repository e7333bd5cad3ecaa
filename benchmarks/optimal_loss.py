"""Benchmark of the exact optimal-loss estimator (issue 3's speed targets).

    .venv/bin/python benchmarks/optimal_loss.py                 # CPU: (a) and (b)
    .venv/bin/python benchmarks/optimal_loss.py --device cuda   # (b) at the full target

(a) the embedded default set (sklearn digits, N = 1797, 8x8x1) at 32 levels, M = 2N, on CPU:
    target under 60 s on 2 cores. The masked process on the same set is timed too.
(b) a CIFAR-10-shaped synthetic set (N = 50,000, 32x32x3). On CPU a few levels with few
    queries are timed and extrapolated to the target (64 levels, M = 100,000); with
    --device cuda the full target runs (target under 3 minutes on an H100).
Work per level is 4 M N D flops (logits matmul + weighted-mean matmul).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffobj.data.loaders import load_sklearn_digits
from diffobj.objectives import schedules
from diffobj.optimal.gaussian_posterior import LOGIT_TOL, logit_error_bound
from diffobj.optimal.inputs import images_to_unit
from diffobj.optimal.table import optimal_loss_table

TARGET_LEVELS, TARGET_QUERIES = 64, 100_000


def schedule(name: str, process: str) -> schedules.Schedule:
    entry = schedules.load_library()[name]
    return schedules.build(name, entry, schedules.DEFAULT_LOG_SNR_RANGE[process])


def timed_table(
    images: np.ndarray, process: str, name: str, levels: int, queries: int, device: str
) -> tuple[float, list[dict]]:
    begin = time.perf_counter()
    rows = optimal_loss_table(
        images, process, schedule(name, process), levels, queries, device=device, progress=False
    )
    return time.perf_counter() - begin, rows


def flops(levels: int, queries: int, n_data: int, dim: int) -> float:
    return 4.0 * levels * queries * n_data * dim


def embedded_default() -> None:
    images = load_sklearn_digits().train.images
    n, dim = len(images), images[0].size
    levels, queries = 32, 2 * n
    seconds, _ = timed_table(images, "gaussian", "vp_cosine", levels, queries, "cpu")
    rate = flops(levels, queries, n, dim) / seconds
    print(
        f"(a) digits N={n} D={dim}, gaussian exact, {levels} levels x M={queries}, cpu "
        f"({torch.get_num_threads()} threads): {seconds:.2f} s  ({rate / 1e9:.1f} GFLOP/s; "
        f"target < 60 s)"
    )
    seconds, _ = timed_table(images, "masked", "masked_linear", levels, queries, "cpu")
    print(f"    digits, masked exact, {levels} levels x M={queries}, cpu: {seconds:.2f} s")


def cifar_shaped(device: str, levels: int, queries: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8)
    n, dim = len(images), images[0].size
    seconds, rows = timed_table(images, "gaussian", "vp_cosine", levels, queries, device)
    rate = flops(levels, queries, n, dim) / seconds
    steady = max(r["tflops"] for r in rows)  # the first level also pays warm-up
    full = flops(TARGET_LEVELS, TARGET_QUERIES, n, dim)
    print(
        f"(b) CIFAR-shaped N={n} D={dim}, gaussian exact, {levels} levels x M={queries}, "
        f"{device}: {seconds:.2f} s, {rate / 1e12:.4f} TFLOP/s (best level {steady:.4f})"
    )
    # low noise: the float32 logits only pick contenders (diffobj.optimal.gaussian_posterior)
    for r in rows:
        alpha, sigma = r["alpha"], r["sigma"]
        x = images_to_unit(images[:1]).to(device)
        bound = logit_error_bound((x + sigma / alpha).to(device), x, alpha**2 / sigma**2)
        path = "float64 contenders" if float(bound.max()) > LOGIT_TOL else "float32"
        print(
            f"    lam={r['log_snr']:+7.2f}: {r['seconds']:.2f} s, {r['tflops']:.4f} TFLOP/s ({path})"
        )
    if (levels, queries) != (TARGET_LEVELS, TARGET_QUERIES):
        print(
            f"    extrapolated to {TARGET_LEVELS} levels x M={TARGET_QUERIES}: "
            f"{full / (steady * 1e12) / 3600:.2f} h at {steady:.4f} TFLOP/s "
            f"({full:.3g} flops; H100 strict-fp32 bound at 49 TFLOP/s: {full / 49e12:.0f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cifar-levels", type=int, help="levels of (b) (cpu default 2)")
    parser.add_argument("--cifar-queries", type=int, help="queries of (b) (cpu default 1024)")
    parser.add_argument("--skip-default", action="store_true", help="only run (b)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if not args.skip_default:
        embedded_default()
    levels = args.cifar_levels or (TARGET_LEVELS if cuda else 2)
    queries = args.cifar_queries or (TARGET_QUERIES if cuda else 1024)
    cifar_shaped(args.device, levels, queries)


if __name__ == "__main__":
    main()
