"""A run's checkpointable training state: network, EMA, optimizer, noise generator, log
windows, gap density and logs so far; saved atomically and resumed bit-exactly.

The checkpoint (``state_dict``) keys are those of every earlier version
(``checkpoint.CHECKPOINT_FORMAT``), so old checkpoints resume.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffobj.devices import Dist, gpu_switches
from diffobj.errors import UserError
from diffobj.models import build_model
from diffobj.objectives.densities import GapDensity
from diffobj.run_config import RunConfig
from diffobj.training.checkpoint import (
    CHECKPOINT_FORMAT,
    comparable_config,
    load_checkpoint,
    save_atomic,
)
from diffobj.training.train_log import BinWindow

EMA_RAMPUP = 0.05  # EDM: the EMA half-life is at most 5% of the images seen so far


class Ema:
    """Exponential moving average of the weights; half-life in images (EDM)."""

    def __init__(self, net: nn.Module, halflife_images: float):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.halflife = float(halflife_images)
        self._source = list(net.parameters())  # the same tensors the optimizer updates in place
        self._target = list(self.net.parameters())

    def update(self, images_seen: int, batch: int) -> None:
        """One step of the average after a batch of ``batch`` images (``images_seen`` in all)."""
        halflife = min(self.halflife, images_seen * EMA_RAMPUP)
        beta = 0.5 ** (batch / max(halflife, 1e-8))
        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._source, 1 - beta)


def build_network(
    config: RunConfig, image_shape: tuple[int, int, int], device: torch.device
) -> nn.Module:
    """The run's network, its initial weights seeded by the run's seed."""
    torch.manual_seed(config.seed)
    net = build_model({**config.model}, config.kind, image_shape).to(device)
    if gpu_switches(device):
        net = net.to(memory_format=torch.channels_last)
    return net


def build_optimizer(net: nn.Module, training: dict[str, Any], device: torch.device):
    return torch.optim.AdamW(
        list(net.parameters()),
        lr=float(training["lr"]),
        betas=(0.9, float(training.get("adam_beta2", 0.999))),  # MD4: 0.99
        eps=1e-8,
        weight_decay=float(training.get("weight_decay", 0.0)),
        # one kernel for the whole update (CPU too: 3.1 -> 0.9 ms a step on the default MLP)
        fused=device.type in ("cpu", "cuda"),
        foreach=device.type not in ("cpu", "cuda"),
    )


class TrainState:
    """What a checkpoint holds; ``step`` is the number of steps trained."""

    def __init__(
        self,
        config: RunConfig,
        dist_: Dist,
        device: torch.device,
        net: nn.Module,
        edges: torch.Tensor,
        density: GapDensity | None,
    ):
        self.config, self.dist, self.device = config, dist_, device
        self.batch = int(config.training["batch_size"])
        self.net = net
        self.params = list(net.parameters())
        self.ema = Ema(net, float(config.training["ema_halflife_images"]))
        self.optimizer = build_optimizer(net, config.training, device)
        self.density = density
        self.noise = torch.Generator(device=device)
        self.window = BinWindow(edges, device)  # the training error since the last log step
        self.refresh_window = BinWindow(edges, device)  # the excess error since the last refresh
        self.step = 0
        self.saved_step: int | None = None
        self.log_rows: list[dict[str, Any]] = []
        self.bin_rows: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "format": CHECKPOINT_FORMAT,
            "run_config": self.config.raw,
            "step": self.step,
            "images_seen": self.step
            * self.batch,  # the data position: the stream is a function of it
            "world_size": self.dist.world,
            "model": self.net.state_dict(),
            "ema": self.ema.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "noise": self.noise.get_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
            },
            # summed over ranks: a resume in any world size continues the logs exactly
            "window": self.window.global_state(self.dist),
            "refresh_window": self.refresh_window.global_state(self.dist),
            "adaptive": self.density.state_dict() if self.density else None,
            "log_rows": self.log_rows,
            "bin_rows": self.bin_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.ema.net.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.noise.set_state(state["rng"]["noise"])
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.window.load_global_state(state["window"], self.dist)
        self.refresh_window.load_global_state(state["refresh_window"], self.dist)
        density = state["adaptive"]
        if self.density and density is not None and not self.density.load_state_dict(density):
            self.refresh_window.reset()  # it holds raw errors too: dropped with them
        self.log_rows = list(state["log_rows"])
        self.bin_rows = list(state["bin_rows"])
        self.step = self.saved_step = int(state["step"])

    def save(self, path: Path) -> None:
        """Checkpoint to ``path`` (rank 0 writes; once per step)."""
        if self.saved_step == self.step:
            return
        self.saved_step = self.step
        state = self.state_dict()  # on every rank: it reduces the windows across ranks
        if self.dist.main:
            save_atomic(state, path)
        if self.dist.world > 1:
            dist.barrier()

    def resume(self, path: Path) -> bool:
        """Continue from the checkpoint at ``path``; False when there is none."""
        state = load_checkpoint(path)
        if state is None:
            return False
        if comparable_config(state["run_config"]) != comparable_config(self.config.raw):
            raise UserError(
                f"{path}: checkpoint of a different run config; delete it or pass "
                "another --checkpoint-dir to start over"
            )
        steps = int(self.config.training["steps"])
        if state["step"] > steps:
            raise UserError(
                f"{path}: checkpoint at step {state['step']} is beyond training.steps = {steps}"
            )
        self._note_world_change(int(state.get("world_size", 1)))
        self.load_state_dict(state)
        return True

    def _note_world_change(self, saved: int) -> None:
        if saved == self.dist.world or not self.dist.main:
            return
        dropout = float(self.config.model.get("dropout", 0.0) or 0.0)
        differs = f"dropout masks ({dropout}) and " if dropout else ""
        print(
            f"{self.config.run_id}: resuming a {saved}-process checkpoint in "
            f"{self.dist.world} process(es): the data, noise and batch continue unchanged; "
            f"{differs}float rounding differ from an uninterrupted {saved}-process run",
            file=sys.stderr,
        )
