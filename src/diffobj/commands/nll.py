"""diffobj nll: the likelihood bound of a trained run on test images, in bits per dimension.

    diffobj nll --run RUN_DIR --data DATA/test/images.npy --out nll.json [--samples-per-image K]

Gaussian runs: VDM's discrete-data bound; masked runs: the MD4 ELBO (``diffobj.metrics.nll``).
The model is the run's final EMA (``diffobj.runs.load_run``), evaluated unconditionally.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffobj import processes
from diffobj.data import read_images
from diffobj.errors import UserError
from diffobj.io import write_json
from diffobj.metrics import nll
from diffobj.provenance import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run folder (config.yaml, model.pt)")
    parser.add_argument(
        "--data", required=True, help="test images (.npy uint8 NHWC, or .npz key 'images')"
    )
    parser.add_argument("--out", required=True, help="result (.json)")
    parser.add_argument(
        "--samples-per-image", type=int, default=1, help="noise levels per image (K)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows per model call")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument(
        "--time-sampling",
        default="schedule",
        choices=nll.TIME_SAMPLINGS,
        help="how noise levels are drawn (all give the same bound, with different variance)",
    )
    parser.add_argument(
        "--grid",
        default="edm",
        choices=list(nll.GRIDS),
        help="Gaussian: where the 256 values sit: edm = u8/127.5 - 1 (as trained), "
        "vdm = 2(u8 + 0.5)/256 - 1 (VDM's, for bit-comparable numbers)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> None:
    from diffobj.runs import load_run
    from diffobj.training.train_data import model_input

    images = read_images(args.data)
    if args.max_images is not None:
        if args.max_images < 1:
            raise UserError(f"--max-images must be >= 1, got {args.max_images}")
        images = images[: args.max_images]
    loaded = load_run(args.run, args.device)
    shape = tuple(images.shape[1:])
    expected = (loaded.image_shape[1], loaded.image_shape[2], loaded.image_shape[0])
    if shape != expected:
        raise UserError(
            f"{args.data}: images are {shape} (H, W, C) but run {args.run} was trained on {expected}"
        )
    # the images stay on the host; each chunk goes to the device inside the bound
    x = model_input(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        loaded.kind,
        torch.device("cpu"),
    )
    grid = {}  # where the 256 values of continuous data sit, when not where training put them
    if args.grid != "edm":
        if not processes.get(loaded.kind).continuous:
            raise UserError(f"--grid {args.grid} applies to Gaussian runs, not {loaded.kind}")
        u8 = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        x = nll.grid_values(args.grid)[u8.long()].float()
        grid = {"grid": args.grid}
    generator = torch.Generator().manual_seed(args.seed)
    common = {
        "samples_per_image": args.samples_per_image,
        "batch_size": args.batch_size,
        "time_sampling": args.time_sampling,
        "generator": generator,
        "device": loaded.device,
        "progress": not args.quiet,
    }
    start = time.perf_counter()
    bound = nll.BOUNDS[loaded.kind](loaded.denoiser, x, loaded.schedule, **grid, **common)
    seconds = time.perf_counter() - start
    result = {
        **bound.summary(),
        "run": str(args.run),
        "run_id": loaded.config.run_id,
        "step": loaded.step,
        "schedule": loaded.schedule.name,
        "data": str(args.data),
        "seed": args.seed,
        "seconds": seconds,
        "runtime": runtime(loaded.device),
    }
    write_json(args.out, result)
    print(
        f"{args.out}: {result['bpd']:.4f} ± {result['stderr']:.4f} bits/dim "
        f"({len(images)} images x {args.samples_per_image} levels, {seconds:.1f} s)"
    )
