"""Host memory of a training process's data: train_data.load_data, then one epoch of batches.

    python benchmarks/load_data_memory.py [--gib 1.0] [--batch 512] [--side 64]

Writes a synthetic images.npy of about GIB GiB (uint8, N x SIDE x SIDE x 3) to a temporary
folder, then, in a fresh process, loads it as `diffobj train` does (on the CPU: the GPU
path's extra pinned copy above 4 GiB is not measured here) and reads every image once in
random batches. Prints, in MiB, the process's peak resident memory (VmHWM) and its private
(anonymous) and file-backed resident memory after loading and after the epoch. Private
memory is what each DDP rank pays on its own; file-backed pages are the page cache of
images.npy, shared by every process of the node and reclaimable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys
import torch
from diffobj.run_config import RunConfig
from diffobj.training.train_data import DataOrder, load_data, model_input
from diffobj.devices import Dist

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields

path, batch = sys.argv[1], int(sys.argv[2])
config = RunConfig("bench", {"run_id": "bench", "data": {"images": path}, "model": {}})
data = load_data(config, torch.device("cpu"), need_labels=False)
loaded = status()
order = DataOrder(data.count, seed=0)
read = getattr(data, "batch", None)
for step in range(data.count // batch):
    idx = order.indices(step, batch, Dist())
    images = read(idx, torch.device("cpu")) if read else data.images[idx]
    x = model_input(images, "gaussian", torch.device("cpu"))
print(json.dumps({"loaded": loaded, "epoch": status()}))
"""


def write_images(folder: Path, gib: float, side: int) -> Path:
    n = int(gib * 2**30 / (side * side * 3))
    path = folder / "images.npy"
    images = np.lib.format.open_memmap(path, "w+", np.uint8, (n, side, side, 3))
    rng = np.random.default_rng(0)
    for start in range(0, n, 4096):  # written in chunks: the benchmark's own memory stays small
        stop = min(start + 4096, n)
        images[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), np.uint8)
    images.flush()
    del images
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_images(Path(folder), args.gib, args.side)
        size_mib = path.stat().st_size / 2**20
        cmd = [sys.executable, "-c", CHILD, str(path), str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"images.npy: {size_mib:.0f} MiB; batch {args.batch}")
    for when, fields in result.items():
        cells = ", ".join(f"{k} {v:.0f}" for k, v in fields.items())
        print(f"  after {when:6s}: {cells} (MiB)")


if __name__ == "__main__":
    main()
