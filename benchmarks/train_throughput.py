"""Training throughput: images/s and peak memory of the real training step.

GPU (the target): the DDPM++ CIFAR-10 network (channels 128, mult 2-2-2, 4 blocks, attention
at 16; 55.7M parameters), batch 512 of 32x32x3, bf16 autocast, channels_last, fused AdamW, EMA;
Gaussian and masked heads. Anchor (EDM's own code, H100, batch 512): 240 images/s fp32,
938 TF32, 1,571 fp16; target >= 3,000.

CPU: a much smaller network and batch (labelled as such), and with --default-run the wall
time of one complete ``diffobj train`` of the embedded default experiment (config/config.yaml
on sklearn digits), the number that decides whether the demo fits in minutes.

    .venv/bin/python benchmarks/train_throughput.py                  # GPU if present, else CPU
    .venv/bin/python benchmarks/train_throughput.py --default-run    # + the default runs (CPU)
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from diffobj.devices import device_description, peak_memory_mb
from diffobj.models import count_parameters
from diffobj.training.setup import setup
from diffobj.training.step import train_step
from diffobj.training.train import TrainOptions

sys.path.insert(0, str(Path(__file__).parent))
from bench_configs import CPU_SMALL, DDPMPP, run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(
    kind: str,
    model: dict,
    batch: int,
    shape: tuple[int, int, int],
    device: str,
    precision: str,
    compile_: bool,
    warmup: int,
    steps: int,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npy"
        c, h, w = shape
        np.save(
            images, np.random.default_rng(0).integers(0, 256, (4 * batch, h, w, c), dtype=np.uint8)
        )
        config = run_config(kind, model, batch, images, precision, compile_)
        trainer = setup(config, Path(tmp) / "run", TrainOptions(device=device, progress=False))
        dev = trainer.device
        for _ in range(warmup):
            train_step(trainer)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(trainer)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        return {
            "kind": kind,
            "params_m": count_parameters(trainer.state.net) / 1e6,
            "batch": batch,
            "images_per_s": steps * batch / seconds,
            "peak_mem_mb": peak_memory_mb(dev),
            "device": device_description(dev),
            "precision": precision if dev.type == "cuda" else "fp32",
        }


def default_runs(threads: int) -> None:
    """Wall time of `diffobj train` for one Gaussian and one masked run of config/config.yaml."""
    from diffobj import spec
    from diffobj.data import prepare

    loaded = spec.load(ROOT / "config" / "config.yaml", root=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        prepare("sklearn_digits", data)
        for run_id in (
            "digits-gaussian-vp_cosine-elbo-tiny-s0",
            "digits-masked-md4_cosine-elbo-tiny-s0",
        ):
            raw = copy.deepcopy(loaded.run(run_id).resolved())
            raw["data"]["images"] = str(data / "images.npy")
            cfg = Path(tmp) / f"{run_id}.yaml"
            cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
            cmd = [
                sys.executable,
                "-m",
                "diffobj.cli",
                "train",
                "--run-config",
                str(cfg),
                "--out",
                str(Path(tmp) / run_id),
                "--device",
                "cpu",
                "--no-progress",
                "--threads",
                str(threads),
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode:
                raise SystemExit(proc.stderr)
            t = raw["training"]
            print(
                f"default run {run_id}: {seconds:.1f} s wall ({t['steps']} steps x batch "
                f"{t['batch_size']}, CPU, {threads} thread(s), incl. start-up and eval_bins)"
            )
            print("   ", proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, help="default: 512 on a GPU, 16 on a CPU")
    parser.add_argument("--steps", type=int, help="timed steps (default: 20 GPU, 5 CPU)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--kind", default="both", choices=["gaussian", "masked", "both"])
    parser.add_argument(
        "--default-run", action="store_true", help="also time the default runs (CPU)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model, label = (DDPMPP, "DDPM++ CIFAR-10") if cuda else (CPU_SMALL, "small CPU network")
    batch = args.batch or (512 if cuda else 16)
    steps = args.steps or (20 if cuda else 5)
    kinds = ["gaussian", "masked"] if args.kind == "both" else [args.kind]
    print(
        f"training throughput: {label}, 32x32x3, batch {batch}"
        + ("" if cuda else "  [CPU: NOT the GPU target configuration]")
    )
    for kind in kinds:
        r = measure(
            kind,
            model,
            batch,
            (3, 32, 32),
            "cuda" if cuda else "cpu",
            args.precision,
            args.compile,
            warmup=5 if cuda else 1,
            steps=steps,
        )
        print(
            f"  {kind:8s} {r['params_m']:.1f}M params  {r['images_per_s']:8.1f} images/s  "
            f"peak {r['peak_mem_mb']:.0f} MB  [{r['device']}, {r['precision']}"
            f"{', compiled' if args.compile else ''}]"
        )
    if args.default_run:
        default_runs(args.threads)


if __name__ == "__main__":
    main()
