"""Sampling throughput: images/s of EDM's Heun sampler (18 steps = 35 network evaluations) and
of the masked ancestral sampler at its default step count (the spec's sampling.masked_steps).

GPU (the target): the DDPM++ CIFAR-10 network, batch 512 of 32x32x3, bf16 autocast,
channels_last (--compile adds torch.compile). Anchor (EDM's code, H100): 80 images/s TF32,
121 fp16; target >= 250 at 35 evaluations. CPU: a small network and batch, labelled as such.
Weights are random: throughput does not depend on them.

    .venv/bin/python benchmarks/sample_throughput.py [--compile] [--batch 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffobj.devices import device_description, peak_memory_mb
from diffobj.models import build_model, count_parameters
from diffobj.runs import make_model_fn
from diffobj.sampling.samplers import SAMPLERS, noise_grid
from diffobj.spec import Sampling

sys.path.insert(0, str(Path(__file__).parent))
from bench_configs import CPU_SMALL, DDPMPP, run_config  # noqa: E402

HEUN_STEPS = 18
MASKED_STEPS = Sampling.model_fields["masked_steps"].default


def measure(
    kind: str, model: dict, batch: int, device: torch.device, compile_: bool, repeats: int
) -> dict:
    config = run_config(kind, model, batch, "unused.npy", precision="bf16")
    shape = (3, 32, 32)
    net = build_model(model, kind, shape).to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    model_fn = make_model_fn(torch.compile(net) if compile_ else net, config, device)
    sampler, steps = (
        (SAMPLERS["heun"], HEUN_STEPS)
        if kind == "gaussian"
        else (SAMPLERS["ancestral"], MASKED_STEPS)
    )
    grid = noise_grid(config.schedule, steps, sampler.grid)
    generator = torch.Generator(device=device).manual_seed(0)

    def once() -> None:
        sampler.fn(
            model_fn, config.schedule, grid, (batch, *shape), generator=generator, device=device
        )

    with torch.no_grad():
        once()  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(repeats):
            once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "params_m": count_parameters(net) / 1e6,
        "steps": steps,
        "images_per_s": repeats * batch / seconds,
        "peak_mem_mb": peak_memory_mb(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, help="default: 512 on a GPU, 8 on a CPU")
    parser.add_argument("--repeats", type=int, help="timed batches (default: 3 GPU, 1 CPU)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model, label = (DDPMPP, "DDPM++ CIFAR-10") if cuda else (CPU_SMALL, "small CPU network")
    batch = args.batch or (512 if cuda else 8)
    repeats = args.repeats or (3 if cuda else 1)
    print(
        f"sampling throughput: {label}, 32x32x3, batch {batch}, {device_description(device)}"
        + (", bf16" if cuda else ", fp32  [CPU: NOT the GPU target configuration]")
        + (", compiled" if args.compile else "")
    )
    for kind, what in (
        ("gaussian", f"heun {HEUN_STEPS} steps = {2 * HEUN_STEPS - 1} NFE"),
        ("masked", f"ancestral {MASKED_STEPS} steps"),
    ):
        r = measure(kind, model, batch, device, args.compile, repeats)
        print(
            f"  {kind:8s} {what:28s} {r['params_m']:.1f}M params  {r['images_per_s']:8.2f} images/s"
            f"  peak {r['peak_mem_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
