"""diffobj sample --run RUN_DIR --sampler NAME --steps N --num S --out samples.npz

Gaussian samplers: ddpm, ddim (--eta, default 0), heun (N steps = 2N - 1 network evaluations);
masked: ancestral. Writes samples.npz (key ``images``: uint8, N x H x W x C) and samples.png.
A class-conditional run draws balanced classes (sample i of class i mod K, key ``labels``),
with classifier-free guidance of scale --guidance (default 0: the conditional model).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run directory (holds model.pt)")
    parser.add_argument(
        "--sampler", required=True, help="ddpm | ddim | heun (Gaussian), ancestral (masked)"
    )
    parser.add_argument("--steps", type=int, required=True, help="sampler steps")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--eta", type=float, help="DDIM noise: 0 deterministic, 1 = DDPM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance", type=float, default=0.0, help="classifier-free guidance scale w (>= 0)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: all cores; give each of N parallel "
        "jobs cores/N, oversubscribed cores slow torch down many times)",
    )
    parser.add_argument(
        "--out", required=True, help="output .npz (a .png grid is written beside it)"
    )


def run(args: argparse.Namespace) -> None:
    from diffobj.errors import UserError
    from diffobj.guidance import run_class_labels
    from diffobj.sample import sample_run, write_samples
    from diffobj.train import set_cpu_threads

    set_cpu_threads(args.threads)

    if not args.out.endswith(".npz"):
        raise UserError(f"--out must name a .npz file, got {args.out!r}")
    start = time.perf_counter()
    images = sample_run(
        args.run,
        args.sampler,
        args.steps,
        args.num,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        compile=args.compile,
        guidance=args.guidance,
    )
    seconds = time.perf_counter() - start
    png = write_samples(images, args.out, run_class_labels(args.run, len(images)))
    print(
        f"{args.out}: {len(images)} images {images.shape[1:]} ({args.sampler}, {args.steps} steps), "
        f"{len(images) / seconds:.1f} images/s; grid {png}",
        file=sys.stderr,
    )
