"""diffobj sample --run RUN_DIR --sampler NAME --steps N --num S --out samples.npz

Gaussian samplers: ddpm, ddim (--eta, default 0), heun (N steps = 2N - 1 network evaluations);
masked: ancestral (--grid, --top-p, --final-argmax: MD4's options). Writes samples.npz (key ``images``: uint8, N x H x W x C) and samples.png.
A class-conditional run draws balanced classes (sample i of class i mod K, key ``labels``),
with classifier-free guidance of scale --guidance (default 0: the conditional model).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run directory (holds model.pt)")
    parser.add_argument("--sampler", required=True, help=sampler_help())
    parser.add_argument("--steps", type=int, required=True, help="sampler steps")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--eta", type=float, help="DDIM noise: 0 deterministic, 1 = DDPM")
    heun = parser.add_argument_group("heun (EDM's sampler)")
    heun.add_argument("--sigma-min", type=float, help="sigma^ range (default: EDM's 0.002 ...")
    heun.add_argument("--sigma-max", type=float, help="... 80, clipped to the training range)")
    heun.add_argument("--s-churn", type=float, default=0.0, help="stochasticity; 0 = off")
    heun.add_argument("--s-min", type=float, default=0.0, help="churn only at sigma^ >= s_min")
    heun.add_argument("--s-max", type=float, default=float("inf"), help="... and <= s_max")
    heun.add_argument("--s-noise", type=float, default=1.0, help="scale of the churn draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's draws")
    parser.add_argument(
        "--guidance", type=float, default=0.0, help="classifier-free guidance scale w (>= 0)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per model call")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present"
    )
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
    parser.add_argument(
        "--grid",
        default="uniform",
        help="ancestral time grid: uniform | cosine (MD4's) | a schedule of --schedules-library",
    )
    parser.add_argument("--top-p", type=float, help="ancestral: nucleus sampling, in (0, 1]")
    parser.add_argument(
        "--final-argmax",
        action="store_true",
        help="ancestral (MD4): stop at lam_max and fill the masks left by the argmax",
    )
    parser.add_argument(
        "--schedules-library", help="schedule library for --grid (default config/schedules.yaml)"
    )


def sampler_help() -> str:
    """``ddpm | ddim | heun (Gaussian), ancestral (masked)``: the registered samplers."""
    from diffobj.sampling.samplers import sampler_names

    kinds = {"gaussian": "Gaussian", "masked": "masked"}
    return ", ".join(
        f"{' | '.join(sampler_names(kind))} ({label})" for kind, label in kinds.items()
    )


def heun_options(args: argparse.Namespace) -> dict:
    """The heun-only arguments as ``sample_run``'s ``heun`` keywords (empty: all defaults)."""
    from diffobj.errors import UserError
    from diffobj.sampling.samplers import Churn

    options: dict = {}
    if (args.sigma_min is None) != (args.sigma_max is None):
        raise UserError("--sigma-min and --sigma-max go together")
    if args.sigma_min is not None:
        if not 0 < args.sigma_min < args.sigma_max:
            raise UserError(f"--sigma-min {args.sigma_min} must be in (0, --sigma-max)")
        options["sigma_range"] = (args.sigma_min, args.sigma_max)
    churn = Churn(args.s_churn, args.s_min, args.s_max, args.s_noise)
    if churn != Churn():
        if args.s_churn < 0 or args.s_noise <= 0:
            raise UserError("--s-churn must be >= 0 and --s-noise > 0")
        options["churn"] = churn
    return options


def run(args: argparse.Namespace) -> None:
    from diffobj.devices import set_cpu_threads
    from diffobj.errors import UserError
    from diffobj.sampling.guidance import run_class_labels
    from diffobj.sampling.samplers import sample_run, write_samples

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
        grid=args.grid,
        top_p=args.top_p,
        final_argmax=args.final_argmax,
        schedules_library=args.schedules_library,
        heun_options=heun_options(args),
        guidance=args.guidance,
    )
    seconds = time.perf_counter() - start
    png = write_samples(images, args.out, run_class_labels(args.run, len(images)))
    print(
        f"{args.out}: {len(images)} images {images.shape[1:]} ({args.sampler}, {args.steps} steps), "
        f"{len(images) / seconds:.1f} images/s; grid {png}",
        file=sys.stderr,
    )
