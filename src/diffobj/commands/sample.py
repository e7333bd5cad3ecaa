"""diffobj sample --run RUN_DIR --sampling SAMPLING.yaml --out samples.npz

The sampling config (RUN_DIR/sampling.yaml, written by the workflow from the spec; see
diffobj.sampling.config) names the sampler, its grid, steps, number of images, seed, guidance
and options. By hand, flags may ask for the same instead:
``--sampler NAME --steps N --num S [--grid G] [--seed ...] [options]``.
Gaussian samplers: ddpm, ddim (--eta, default 0), heun (N steps = 2N - 1 network evaluations;
--s-churn ...); masked: ancestral (--top-p, --final-argmax: MD4's options). Grids: uniform,
edm (--sigma-min, --sigma-max), MD4's cosine or a schedule's name (masked); default: the
sampler's own. Writes samples.npz (key ``images``: uint8, N x H x W x C) and samples.png.
A class-conditional run draws balanced classes (sample i of class i mod K, key ``labels``),
with classifier-free guidance of scale --guidance (default 0: the conditional model).
"""

from __future__ import annotations

import argparse
import sys
import time

# the flags that set an option of a sampler or a grid, by the option's name
OPTION_FLAGS = ("eta", "sigma_min", "sigma_max", "s_churn", "s_min", "s_max", "s_noise")
OPTION_FLAGS += ("top_p", "final_argmax")
# the flags the sampling config replaces
REQUEST_FLAGS = ("sampler", "steps", "num", "grid", "schedules_library", "seed", "guidance")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run directory (holds model.pt)")
    parser.add_argument(
        "--sampling", help="the run's sampling config (YAML), instead of the flags below"
    )
    parser.add_argument(
        "--out", required=True, help="output .npz (a .png grid is written beside it)"
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
    request = parser.add_argument_group("by hand, instead of --sampling")
    request.add_argument("--sampler", help=sampler_help())
    request.add_argument("--steps", type=int, help="sampler steps")
    request.add_argument("--num", type=int, help="number of images")
    request.add_argument("--grid", help=grid_help())
    request.add_argument(
        "--schedules-library", help="schedule library for --grid (default config/schedules.yaml)"
    )
    request.add_argument("--seed", type=int, help="seed of the sampler's draws (default 0)")
    request.add_argument(
        "--guidance", type=float, help="classifier-free guidance scale w (>= 0, default 0)"
    )
    options = parser.add_argument_group("options of a sampler or a grid (default: its own)")
    options.add_argument("--eta", type=float, help="ddim: noise, 0 deterministic, 1 = DDPM")
    options.add_argument("--sigma-min", type=float, help="edm grid: sigma^ range (EDM's 0.002 ...")
    options.add_argument("--sigma-max", type=float, help="... 80, clipped to the training range)")
    options.add_argument("--s-churn", type=float, help="heun: stochasticity; 0 = off")
    options.add_argument("--s-min", type=float, help="heun: churn only at sigma^ >= s_min")
    options.add_argument("--s-max", type=float, help="heun: ... and <= s_max")
    options.add_argument("--s-noise", type=float, help="heun: scale of the churn draws")
    options.add_argument("--top-p", type=float, help="ancestral: nucleus sampling, in (0, 1]")
    options.add_argument(
        "--final-argmax",
        action="store_const",
        const=True,
        help="ancestral (MD4): stop at lam_max and fill the masks left by the argmax",
    )


def sampler_help() -> str:
    """``ddpm | ddim | heun (gaussian), ancestral (masked)``: the registered samplers."""
    from diffobj.processes import KINDS
    from diffobj.sampling.samplers import sampler_names

    return ", ".join(f"{' | '.join(sampler_names(kind))} ({kind})" for kind in KINDS)


def grid_help() -> str:
    """The registered grids, with their help; default: the sampler's own."""
    from diffobj.sampling.samplers import GRIDS

    return "; ".join(f"{name}: {entry.help}" for name, entry in GRIDS.items()) + (
        "; default: the sampler's own"
    )


def sampling_config(args: argparse.Namespace):
    """The SamplingConfig of --sampling FILE, or of the flags (never both)."""
    from diffobj.errors import UserError
    from diffobj.sampling.config import load_sampling_config, requested

    given = {k: v for k in REQUEST_FLAGS + OPTION_FLAGS if (v := getattr(args, k)) is not None}
    if args.sampling is not None:
        if given:
            flag = next(iter(given)).replace("_", "-")
            raise UserError(f"--{flag}: give --sampling FILE or the sampling flags, not both")
        return load_sampling_config(args.sampling)
    for need in ("sampler", "steps", "num"):
        if need not in given:
            raise UserError(f"--{need} is needed (or --sampling FILE)")
    return requested(given.pop("sampler"), given.pop("steps"), given.pop("num"), **given)


def run(args: argparse.Namespace) -> None:
    from diffobj.devices import set_cpu_threads
    from diffobj.errors import UserError
    from diffobj.sampling.guidance import run_class_labels
    from diffobj.sampling.samplers import sample_run, write_samples

    set_cpu_threads(args.threads)

    if not args.out.endswith(".npz"):
        raise UserError(f"--out must name a .npz file, got {args.out!r}")
    sampling = sampling_config(args)
    start = time.perf_counter()
    images = sample_run(
        args.run,
        sampling,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        compile=args.compile,
    )
    seconds = time.perf_counter() - start
    png = write_samples(images, args.out, run_class_labels(args.run, len(images)))
    print(
        f"{args.out}: {len(images)} images {images.shape[1:]} "
        f"({sampling.sampler}, {sampling.steps} steps), "
        f"{len(images) / seconds:.1f} images/s; grid {png}",
        file=sys.stderr,
    )
