"""A trained run: the network as the process sees it, and reading RUN_DIR/model.pt.

What sampling, bounds and NLL need of a finished run, without the training machinery:
``load_run`` gives the final EMA network and its denoiser; ``make_model_fn`` turns any network
of a run into the process's denoiser callable; ``model_record`` is what training writes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffobj import processes
from diffobj.devices import gpu_switches, resolve_device
from diffobj.errors import UserError
from diffobj.models import build_model
from diffobj.objectives.schedules import Level, Schedule
from diffobj.run_config import RunConfig

MODEL_FORMAT = "diffobj-model-v1"

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on a GPU when the run asks for it; plain fp32 on a CPU (unless the GPU
    switches are rehearsed there, ``devices.gpu_switches``)."""
    enabled = gpu_switches(device) and precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def make_model_fn(
    net: nn.Module,
    config: RunConfig,
    device: torch.device,
    labels: torch.Tensor | None = None,
    augment_labels: torch.Tensor | None = None,
) -> ModelFn:
    """The denoiser callable of a network: Gaussian eps_fn(z, level) -> eps_hat (through
    ``Denoiser``), masked logits_fn(z_tokens, level) -> logits (B, 256, C, H, W).
    ``augment_labels``: what augment.py did to the batch (Gaussian; None = not augmented)."""
    precision = config.training.get("precision", "fp32")
    denoiser = processes.get(config.kind).denoiser(net, config.process)

    def model_fn(z: torch.Tensor, level: Level) -> torch.Tensor:
        with autocast_for(device, precision):
            return denoiser(z, level, labels, augment_labels)

    return model_fn


def model_record(
    config: RunConfig, image_shape: tuple[int, ...], step: int, images_seen: int, ema: nn.Module
) -> dict[str, Any]:
    """RUN_DIR/model.pt: the run config, where training stopped and the EMA weights (CPU)."""
    return {
        "format": MODEL_FORMAT,
        "run_config": config.raw,
        "kind": config.kind,
        "image_shape": list(image_shape),
        "step": step,
        "images_seen": images_seen,
        "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
    }


@dataclass
class LoadedRun:
    """A trained run, ready to sample or evaluate."""

    config: RunConfig
    kind: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    schedule: Schedule
    net: nn.Module  # the EMA network, eval mode, on ``device``
    denoiser: ModelFn  # Gaussian eps_fn(z, level) -> eps_hat; masked logits_fn(z, level) -> logits
    device: torch.device
    step: int

    def conditioned(self, labels: torch.Tensor | None) -> ModelFn:
        """The denoiser with class labels (class-conditional models; None = unconditional)."""
        return make_model_fn(self.net, self.config, self.device, labels)


def read_model_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UserError(f"run directory {run_dir} has no model.pt (train it first)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable model file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a diffobj model file")
    return record


def load_run(run_dir: str | Path, device: str | torch.device = "auto") -> LoadedRun:
    """The final EMA model of a trained run directory (RUN_DIR/model.pt)."""
    record = read_model_record(Path(run_dir))
    raw = record["run_config"]
    config = RunConfig(str(raw["run_id"]), raw)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    shape = tuple(int(s) for s in record["image_shape"])
    net = build_model({**config.model}, record["kind"], shape)
    net.load_state_dict(record["ema"])
    net = net.to(dev).eval().requires_grad_(False)
    if gpu_switches(dev):
        net = net.to(memory_format=torch.channels_last)
    return LoadedRun(
        config,
        record["kind"],
        shape,
        config.schedule,
        net,
        make_model_fn(net, config, dev),
        dev,
        int(record["step"]),
    )
