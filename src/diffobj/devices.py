"""Devices and processes of a job: the device, CPU threads, the DDP world, peak memory."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch

from diffobj.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_env() -> Dist:
    """Rank and world size from torchrun's or SLURM's environment (1 process when neither)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return Dist(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
        )
    return Dist()


def resolve_device(
    name: str | torch.device | None = "auto", local_rank: int | None = 0
) -> torch.device:
    """The device a ``--device`` value names: ``auto`` (or None) a GPU if CUDA is available,
    else the CPU; ``cpu``; ``cuda``; ``cuda:N`` or a torch.device as given.

    A GPU without an index (auto, cuda) is ``cuda:local_rank`` (a DDP process's own GPU), or
    ``torch.device("cuda")`` (torch's current GPU) when ``local_rank`` is None. UserError for a
    GPU where CUDA is not available and for anything but the CPU or a CUDA GPU."""
    if name is None or name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {str(name)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: CUDA is not available on this machine (use --device cpu)"
        )
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


# =1: bf16 autocast and channels_last on a CPU too, as on a GPU (`diffobj rehearse
# --gpu-switches`): the GPU's code paths run, slowly, where no GPU is
GPU_SWITCHES_ON_CPU = "DIFFOBJ_GPU_SWITCHES_ON_CPU"


def gpu_switches(device: torch.device) -> bool:
    """Whether the GPU switches (bf16 autocast where the run asks for it, channels_last) apply
    on ``device``: on a GPU always, on a CPU only under $DIFFOBJ_GPU_SWITCHES_ON_CPU=1."""
    return device.type == "cuda" or os.environ.get(GPU_SWITCHES_ON_CPU) == "1"


def set_cpu_threads(threads: int | None) -> None:
    """torch's CPU thread count (None: leave torch's default, one per core)."""
    if threads is None:
        return
    if threads <= 0:
        raise UserError(f"--threads must be positive, got {threads}")
    torch.set_num_threads(threads)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
