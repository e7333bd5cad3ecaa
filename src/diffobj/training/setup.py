"""Setting a run up: device and world, objective, data, network and state, in that order
(bad input raises before anything is written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffobj.devices import Dist, distributed_env, resolve_device
from diffobj.errors import UserError
from diffobj.run_config import RunConfig
from diffobj.training import augment as augment_mod
from diffobj.training.augment import AugmentPipe
from diffobj.training.checkpoint import CHECKPOINT_NAME, checkpoint_dir_for
from diffobj.training.objective import Objective, build_objective
from diffobj.training.state import TrainState, build_network
from diffobj.training.train_data import DataOrder, TrainData, load_data


@dataclass
class TrainOptions:
    device: str = "auto"
    checkpoint_dir: str | Path | None = None
    optimal_loss: str | Path | None = None
    eval_images: int = 256  # training images used for eval_bins.csv (per bin centre)
    adaptive_refresh: int = 200  # steps between refreshes of the adaptive density
    progress: bool = True
    stop_after: int | None = None  # testing: checkpoint and stop (as if killed) after this step


@dataclass
class Setup:
    """One run's training: what it reads, what it trains (``state``) and where it writes."""

    config: RunConfig
    config_path: Path | None  # copied verbatim to RUN_DIR/config.yaml
    out_dir: Path
    options: TrainOptions
    dist: Dist
    device: torch.device
    batch: int  # the global batch
    objective: Objective
    data: TrainData
    order: DataOrder
    augment: AugmentPipe | None
    state: TrainState
    train_net: nn.Module  # the network the step calls: DDP-wrapped and compiled as asked
    checkpoint_path: Path

    @property
    def edges(self) -> torch.Tensor:
        return self.objective.edges


def setup(
    config: RunConfig, out_dir: Path, options: TrainOptions, config_path: Path | None = None
) -> Setup:
    dist_ = distributed_env()
    device = resolve_device(options.device, dist_.local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels
    batch = int(config.training["batch_size"])
    if batch % dist_.world:
        raise UserError(
            f"run {config.run_id}: training.batch_size {batch} is not divisible "
            f"by the {dist_.world} processes"
        )
    objective = build_objective(config, options.optimal_loss)
    num_classes = int(config.model.get("num_classes", 0) or 0)
    data = load_data(config, device, need_labels=num_classes > 0)
    net = build_network(config, data.image_shape, device)
    augment = augment_mod.for_run(config)
    state = TrainState(config, dist_, device, net, objective.edges, objective.density)
    checkpoint_dir = checkpoint_dir_for(Path(out_dir), config.run_id, options.checkpoint_dir)
    return Setup(
        config=config,
        config_path=config_path,
        out_dir=Path(out_dir),
        options=options,
        dist=dist_,
        device=device,
        batch=batch,
        objective=objective,
        data=data,
        order=DataOrder(data.count, config.seed),
        augment=augment,
        state=state,
        train_net=wrap(net, dist_, device, bool(config.training.get("compile", False))),
        checkpoint_path=checkpoint_dir / CHECKPOINT_NAME,
    )


def wrap(net: nn.Module, dist_: Dist, device: torch.device, compile_: bool) -> nn.Module:
    """The network under DDP (more than one process) and torch.compile (when asked)."""
    if dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=ids)
    if compile_:
        net = torch.compile(net)
    return net
