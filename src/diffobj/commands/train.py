"""diffobj train --run-config RUN.yaml --out RUN_DIR: train one run (resumes if interrupted).

Exit codes: 0 done; 2 bad input (nothing written); 3 stopped by SIGUSR1 / SIGUSR2 after
checkpointing (requeue and rerun the same command); 143 stopped by SIGTERM, 130 by SIGINT (Ctrl-C),
after checkpointing.
Checkpoints: --checkpoint-dir, else $DIFFOBJ_CHECKPOINT_DIR/<run_id>, else RUN_DIR/checkpoints;
deleted once the run is done and model.pt written, unless training.keep_checkpoint is true.
"""

from __future__ import annotations

import argparse
import sys

from diffobj.training.checkpoint import Preempted
from diffobj.training.train import TrainOptions, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-config", required=True, help="the run's resolved config (YAML)")
    parser.add_argument(
        "--out", required=True, help="run directory for model.pt, logs and config.yaml"
    )
    parser.add_argument(
        "--optimal-loss",
        help="optimal-loss table (CSV); needed when the weighting reads Jstar or "
        "training.density is adaptive_corrected or optimal_loss_schedule",
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present"
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="checkpoint folder (default: $DIFFOBJ_CHECKPOINT_DIR/RUN_ID if set, else OUT/checkpoints)",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=256,
        help="training images per log-SNR bin for eval_bins.csv (default 256)",
    )
    parser.add_argument(
        "--adaptive-refresh",
        type=int,
        default=200,
        help="steps between refreshes of the adaptive noise density (default 200)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: all cores; give each of N parallel "
        "jobs cores/N, oversubscribed cores slow torch down many times)",
    )


def run(args: argparse.Namespace) -> None:
    from diffobj.devices import set_cpu_threads
    from diffobj.errors import UserError

    set_cpu_threads(args.threads)

    for name in ("eval_images", "adaptive_refresh"):
        if getattr(args, name) <= 0:
            raise UserError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    options = TrainOptions(
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        optimal_loss=args.optimal_loss,
        eval_images=args.eval_images,
        adaptive_refresh=args.adaptive_refresh,
        progress=not args.no_progress,
    )
    try:
        train(args.run_config, args.out, options)
    except Preempted as stop:
        print(f"diffobj train: {stop}", file=sys.stderr)
        sys.exit(stop.code)
