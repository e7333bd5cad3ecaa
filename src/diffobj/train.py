"""Training one run: fast on a GPU, resumable to the bit on a CPU, signal safe.

``train(run_config, out_dir)`` trains the run's network with AdamW (fused kernels on CPU and CUDA), linear
learning-rate warmup, gradient clipping and an EMA whose half-life is counted in images (EDM);
on a GPU with bf16 autocast and channels_last (precision from the run config), optionally
torch.compile'd. Every random draw is a function of (seed, rank, step): the data order is a
seeded permutation per epoch and each step reseeds the noise generator, so a resumed run
draws exactly what an uninterrupted run draws.

Outputs in RUN_DIR (written at the end, atomically; bad input writes nothing):
  config.yaml     the run config
  model.pt        the final EMA network (``load_run`` reads it)
  train_log.csv   step, images_seen, loss, grad_norm, lr, images_per_s, peak_mem_mb,
                  error_bin_00 .. error_bin_K-1 (mean unweighted training error per log-SNR bin)
  train_bins.csv  the same binned errors in long form: step, bin, log_snr, error, count
  eval_bins.csv   the EMA model's unweighted error at the bin centres on the training data:
                  log_snr, error, stderr, n (Gaussian eps-MSE per dim, masked CE nats per dim)
train_log.csv (and tensorboard/, its TensorBoard event stream) also grow while the run trains.
The bins are ``log_snr_bins`` equal bins over the process's log_snr_range: the same edges
for every run of a process, so runs and the optimal loss line up.

Checkpoints (model, EMA, optimizer, step, RNG states, logs so far) go atomically to the
checkpoint folder every ``checkpoint_every`` steps and when a signal arrives: the handler only
sets a flag, the checkpoint is written at the next step boundary, then the process exits:
  SIGUSR1 / SIGUSR2 -> exit code 3 (EXIT_PREEMPTED: SLURM's pre-walltime signal; requeue and
                       rerun the same command to resume)
  SIGTERM           -> exit code 143 (EXIT_TERMINATED, 128 + SIGTERM, after checkpointing)
  SIGINT (Ctrl-C)   -> exit code 130 (EXIT_INTERRUPTED, after checkpointing; a second Ctrl-C
                       stops at once, the checkpoint on disk being the last whole one)
The checkpoint folder is ``--checkpoint-dir``, else $DIFFOBJ_CHECKPOINT_DIR/<run_id>, else
RUN_DIR/checkpoints (not a workflow output, so it survives Snakemake deleting outputs).
Rerunning the same command resumes. A finished run deletes its checkpoint once its outputs are
written, unless ``training.keep_checkpoint``; then raising training.steps continues it.

Multi-GPU: launched with WORLD_SIZE > 1 (torchrun) or SLURM_NTASKS > 1 (srun, with
MASTER_ADDR / MASTER_PORT set), training runs under DDP with the batch split across ranks;
rank 0 writes logs, checkpoints and outputs. The world size does not change the experiment:
rank r trains on rows [r B/W, (r+1) B/W) of the step's global batch, with the data, noise
levels, noise, masks, augmentations and label dropout those rows get in a 1-process run
(``seeds.Shard``), and gradients are averaged over ranks; what remains world-size dependent
is dropout inside the network (each rank draws masks for its rows from its own stream) and
the order of float sums (reductions across ranks). So a checkpoint resumes in another world
size (a note says so); with dropout 0 the runs agree to float rounding.

The pieces live beside this module, one job each: ``devices`` (device, threads, DDP world),
``seeds`` (the random streams), ``train_data`` (images on the device, their order),
``train_log`` (binned errors, log columns), ``checkpoint`` (signals, atomic checkpoints, exit
codes); this module is the loop that uses them and the loading of a trained run.
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffobj import adaptive as adaptive_mod
from diffobj import augment as augment_mod
from diffobj import densities, optimal_curve
from diffobj import lr as lr_mod
from diffobj.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    SIGNAL_POLL_STEPS,
    Preempted,
    SignalFlag,
    checkpoint_dir_for,
    comparable_config,
    drop_checkpoint,
    load_checkpoint,
    save_atomic,
)
from diffobj.devices import (
    device_description,
    distributed_env,
    gpu_switches,
    peak_memory_mb,
    resolve_device,
)
from diffobj.errors import UserError
from diffobj.io import atomic_path, write_csv, write_json
from diffobj.models import build_model, count_parameters
from diffobj.processes import gaussian, masked
from diffobj.processes.gaussian import Denoiser
from diffobj.provenance import runtime
from diffobj.run_config import RunConfig, dump_run_config, load_run_config
from diffobj.schedules import Level, Schedule
from diffobj.seeds import DROPOUT, EVAL, NOISE, Shard, draw, step_seed
from diffobj.train_data import DataOrder, load_data, model_input
from diffobj.train_log import BinWindow, LiveLog, ProgressLine, bin_column, log_columns

MODEL_FORMAT = "diffobj-model-v1"
EMA_RAMPUP = 0.05  # EDM: the EMA half-life is at most 5% of the images seen so far

ModelFn = Callable[[torch.Tensor, Level], torch.Tensor]


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
class TrainResult:
    out_dir: Path
    step: int
    images_per_s: float
    peak_mem_mb: float
    log_rows: list[dict[str, Any]] = field(default_factory=list)


# -- the network as the process sees it ----------------------------------------------------------


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
    if config.kind == "gaussian":
        process = config.process
        denoiser = Denoiser(net, process.get("prediction", "eps"), process.get("sigma_data", 0.5))

        def eps_fn(z: torch.Tensor, level: Level) -> torch.Tensor:
            with autocast_for(device, precision):
                return denoiser(z, level, labels, augment_labels)

        return eps_fn

    def logits_fn(z: torch.Tensor, level: Level) -> torch.Tensor:
        with autocast_for(device, precision):
            return net(z, level.log_snr.float(), labels)

    return logits_fn


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


# -- the loop -------------------------------------------------------------------------------------------


class Trainer:
    """One run's training state; ``run()`` trains to ``training.steps``."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        options: TrainOptions,
        config_path: Path | None = None,
    ):
        self.config = config
        self.config_path = config_path  # copied verbatim to RUN_DIR/config.yaml
        self.out_dir = Path(out_dir)
        self.options = options
        self.training = config.training
        self.kind = config.kind
        self.dist = distributed_env()
        self.device = resolve_device(options.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels
        self.batch = int(self.training["batch_size"])
        if self.batch % self.dist.world:
            raise UserError(
                f"run {config.run_id}: training.batch_size {self.batch} is not divisible "
                f"by the {self.dist.world} processes"
            )
        self.schedule: Schedule = config.schedule
        self.weighting = optimal_curve.bind(
            config.weighting, options.optimal_loss, config.run_id, config.kind
        )
        if self.kind not in self.weighting.processes:
            raise UserError(
                f"run {config.run_id}: weighting {self.weighting.name!r} is for "
                f"{list(self.weighting.processes)}, not {self.kind}"
            )
        self.edges = adaptive_mod.bin_edges(
            tuple(config.process["log_snr_range"]), int(self.training.get("log_snr_bins", 16))
        )
        self.adaptive = self._adaptive()
        self.num_classes = int(config.model.get("num_classes", 0) or 0)
        self.data = load_data(config, self.device, need_labels=self.num_classes > 0)
        self.order = DataOrder(self.data.count, config.seed)
        torch.manual_seed(config.seed)  # the initial weights
        self.net = build_model({**config.model}, self.kind, self.data.image_shape).to(self.device)
        if gpu_switches(self.device):
            self.net = self.net.to(memory_format=torch.channels_last)
        self.params = list(self.net.parameters())
        self.ema = Ema(self.net, float(self.training["ema_halflife_images"]))
        self.augment = augment_mod.for_run(config)
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=float(self.training["lr"]),
            betas=(0.9, float(self.training.get("adam_beta2", 0.999))),  # MD4: 0.99
            eps=1e-8,
            weight_decay=float(self.training.get("weight_decay", 0.0)),
            # one kernel for the whole update (CPU too: 3.1 -> 0.9 ms a step on the default MLP)
            fused=self.device.type in ("cpu", "cuda"),
            foreach=self.device.type not in ("cpu", "cuda"),
        )
        self.train_net = self._wrap(self.net)
        self.noise = torch.Generator(device=self.device)
        self.window = BinWindow(self.edges, self.device)
        self.refresh_window = BinWindow(self.edges, self.device)
        self.step = 0
        self._saved_step: int | None = None
        self.log_rows: list[dict[str, Any]] = []
        self.bin_rows: list[dict[str, Any]] = []
        self.checkpoint_dir = checkpoint_dir_for(
            self.out_dir, config.run_id, options.checkpoint_dir
        )

    def _adaptive(self) -> densities.GapDensity | None:
        name = densities.density_name(self.training)
        if name == "schedule":
            return None
        if self.options.optimal_loss is None:
            raise UserError(
                f"run {self.config.run_id}: training.density {name} needs "
                "--optimal-loss TABLE.csv (from `diffobj optimal-loss`)"
            )
        table = densities.read_optimal_loss(self.options.optimal_loss)
        return densities.build(name, self.kind, self.schedule, self.weighting, self.edges, table)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.training.get("compile", False):
            net = torch.compile(net)
        return net

    # -- checkpoint state --------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT_NAME

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
            "adaptive": self.adaptive.state_dict() if self.adaptive else None,
            "log_rows": self.log_rows,
            "bin_rows": self.bin_rows,
        }

    def save_checkpoint(self) -> None:
        if self._saved_step == self.step:
            return
        self._saved_step = self.step
        state = self.state_dict()  # on every rank: it reduces the windows across ranks
        if self.dist.main:
            save_atomic(state, self.checkpoint_path)
        if self.dist.world > 1:
            dist.barrier()

    def resume(self) -> bool:
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return False
        if comparable_config(state["run_config"]) != comparable_config(self.config.raw):
            raise UserError(
                f"{self.checkpoint_path}: checkpoint of a different run config; delete it or pass "
                "another --checkpoint-dir to start over"
            )
        steps = int(self.training["steps"])
        if state["step"] > steps:
            raise UserError(
                f"{self.checkpoint_path}: checkpoint at step {state['step']} is beyond "
                f"training.steps = {steps}"
            )
        self._note_world_change(int(state.get("world_size", 1)))
        self.net.load_state_dict(state["model"])
        self.ema.net.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.noise.set_state(state["rng"]["noise"])
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.window.load_global_state(state["window"], self.dist)
        self.refresh_window.load_global_state(state["refresh_window"], self.dist)
        adaptive = state["adaptive"]
        if self.adaptive and adaptive is not None and not self.adaptive.load_state_dict(adaptive):
            self.refresh_window.reset()  # it holds raw errors too: dropped with them
        self.log_rows = list(state["log_rows"])
        self.bin_rows = list(state["bin_rows"])
        self.step = self._saved_step = int(state["step"])
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

    # -- one step ------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return lr_mod.lr_at(self.training, step)

    def train_step(self) -> None:
        seed, rank, step = self.config.seed, self.dist.rank, self.step
        idx = self.order.indices(step, self.batch, self.dist)
        x = model_input(self.data.batch(idx, self.device), self.kind, self.device)
        # one noise stream for all ranks (rank 0's seed), each keeping its rows of the batch
        self.noise.manual_seed(step_seed(seed, 0, step, NOISE))
        share = self.batch // self.dist.world
        draws = Shard(self.noise, rank * share, share, self.batch)
        torch.manual_seed(step_seed(seed, rank, step, DROPOUT))  # dropout draws
        labels = self._labels(idx, draws)
        augmented = None
        if self.augment is not None:  # EDM's non-leaking augmentation, labels to the network
            x, augmented = self.augment(x, draws)
        model_fn = make_model_fn(self.train_net, self.config, self.device, labels, augmented)
        self.net.train()
        if self.adaptive is not None:
            terms = self.adaptive.loss(model_fn, x, draws)
        else:
            process = gaussian if self.kind == "gaussian" else masked
            terms = process.weighted_loss(model_fn, x, self.schedule, self.weighting, draws)
        loss = terms.loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, float(self.training["grad_clip"]))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.step * self.batch, self.batch)
        self.window.add(terms.log_snr, terms.error, loss, grad_norm)
        if self.adaptive is not None:
            # the gap is binned per sample: error - J*(lam_i), not the bin's error - J*(centre)
            self.refresh_window.add(terms.log_snr, terms.excess, loss, grad_norm)

    def _labels(self, idx: torch.Tensor, draws: Shard) -> torch.Tensor | None:
        labels = self.data.labels_of(idx, self.device)
        if labels is None:
            return None
        p = float(self.config.model.get("label_dropout", 0.0))
        if p > 0:  # classifier-free guidance: the "no label" class index is num_classes
            drop = draw(torch.rand, labels.shape, draws, device=self.device) < p
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return labels

    # -- logging ----------------------------------------------------------------------------------------
    def log(self, seconds: float, images: int) -> dict[str, Any]:
        w = self.window.reduced(self.dist)
        steps = max(self.window.steps, 1)
        row: dict[str, Any] = {
            "step": self.step,
            "images_seen": self.step * self.batch,
            "loss": float(w["loss_sum"]) / steps,
            "grad_norm": float(w["grad_sum"]) / steps,
            "lr": self.lr_at(self.step - 1),
            "images_per_s": images / seconds if seconds > 0 else float("nan"),
            "peak_mem_mb": peak_memory_mb(self.device),
        }
        centres = adaptive_mod.bin_centres(self.edges)
        for k in range(len(centres)):
            count = float(w["count"][k])
            error = float(w["error_sum"][k]) / count if count else ""
            row[bin_column(k)] = error
            if count:
                self.bin_rows.append(
                    {
                        "step": self.step,
                        "bin": k,
                        "log_snr": float(centres[k]),
                        "error": error,
                        "count": int(count),
                    }
                )
        self.log_rows.append(row)
        self.window.reset()
        return row

    def refresh_density(self) -> None:
        w = self.refresh_window.reduced(self.dist)
        self.adaptive.update(w["error_sum"], w["count"])
        self.refresh_window.reset()

    # -- the run ------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        steps = int(self.training["steps"])
        flag = SignalFlag()
        with flag.installed():  # from here on a signal means "checkpoint at the next step boundary"
            resumed = self.resume()
            self._announce(resumed)
            stopped, images, seconds = self._loop(steps, flag)
        peak = peak_memory_mb(self.device)
        rate = images / seconds if seconds else float("nan")
        if stopped:
            return TrainResult(self.out_dir, self.step, rate, peak, self.log_rows)
        if self.dist.main:
            self.write_outputs()
            if not self.training.get("keep_checkpoint", False):
                drop_checkpoint(self.checkpoint_path)  # only now: the outputs are whole
            print(
                f"{self.config.run_id}: {steps} steps, {rate:.1f} images/s, peak memory "
                f"{peak:.0f} MB ({'GPU' if self.device.type == 'cuda' else 'CPU RSS'}); "
                f"outputs in {self.out_dir}",
                file=sys.stderr,
            )
        if self.dist.world > 1:
            dist.barrier()
        return TrainResult(self.out_dir, self.step, rate, peak, self.log_rows)

    def _loop(self, steps: int, flag: SignalFlag) -> tuple[bool, int, float]:
        """Train to ``steps``; returns (stopped early, images trained, seconds in the loop)."""
        from tqdm import tqdm

        log_every = int(self.training["log_every"])
        checkpoint_every = int(self.training["checkpoint_every"])
        total_images, total_seconds = 0, 0.0
        bar = tqdm(
            total=steps,
            initial=self.step,
            desc=self.config.run_id,
            unit="step",
            disable=not (self.options.progress and self.dist.main),
            mininterval=1.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # the log readable while the run trains, and a plain progress line where no bar is drawn
        live = self._live_log() if self.dist.main else None
        plain = self.dist.main and bar.disable
        progress = ProgressLine(self.config.run_id, steps, self.batch) if plain else None
        with bar, live or nullcontext():
            window_start, window_step = time.perf_counter(), self.step
            while self.step < steps:
                self.train_step()
                bar.update(1)
                if self.step % log_every == 0 or self.step == steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    seconds = time.perf_counter() - window_start
                    images = (self.step - window_step) * self.batch
                    total_images, total_seconds = total_images + images, total_seconds + seconds
                    row = self.log(seconds, images)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}")
                    if live is not None:
                        live.append(row)
                    if progress is not None:
                        progress.update(row)
                    window_start, window_step = time.perf_counter(), self.step
                if self.adaptive is not None and self.step % self.options.adaptive_refresh == 0:
                    self.refresh_density()
                if self.step % checkpoint_every == 0 or self.step == steps:
                    self.save_checkpoint()
                received = self._poll_signal(flag)
                if received is not None and self.step < steps:
                    self.save_checkpoint()
                    raise Preempted(received, self.step, self.checkpoint_path)
                if self.options.stop_after is not None and self.step >= self.options.stop_after:
                    self.save_checkpoint()
                    return True, total_images, total_seconds
        return False, total_images, total_seconds

    def _live_log(self) -> LiveLog:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = log_columns(len(self.edges) - 1)
        return LiveLog(self.out_dir / "train_log.csv", columns, self.log_rows)

    def _poll_signal(self, flag: SignalFlag) -> int | None:
        if self.dist.world > 1 and self.step % SIGNAL_POLL_STEPS:
            return None
        return flag.agreed(self.dist, self.device)

    def _announce(self, resumed: bool) -> None:
        if not self.dist.main:
            return
        params = count_parameters(self.net)
        switches = gpu_switches(self.device)
        precision = self.training.get("precision", "fp32") if switches else "fp32"
        where = f"resuming at step {self.step}" if resumed else "from scratch"
        print(
            f"{self.config.run_id}: {self.kind}, {params / 1e6:.2f}M parameters, "
            f"device {device_description(self.device)}, {precision}, world size {self.dist.world}, "
            f"{self.data.count} images {self.data.image_shape}, {where} "
            f"(checkpoints in {self.checkpoint_dir})",
            file=sys.stderr,
        )

    # -- outputs ---------------------------------------------------------------------------------------------
    def write_outputs(self) -> None:
        eval_rows = self.evaluate_bins()
        out = self.out_dir
        write_csv(out / "train_log.csv", self.log_rows, log_columns(len(self.edges) - 1))
        write_csv(
            out / "train_bins.csv", self.bin_rows, ["step", "bin", "log_snr", "error", "count"]
        )
        write_csv(out / "eval_bins.csv", eval_rows, ["log_snr", "error", "stderr", "n"])
        write_json(out / "runtime.json", {"runtime": runtime(self.device)})
        save_atomic(self.model_record(), out / "model.pt")
        self._write_config(out / "config.yaml")

    def _write_config(self, path: Path) -> None:
        source = self.config_path
        if source is not None and Path(source).resolve() == path.resolve():
            return
        with atomic_path(path) as tmp:
            if source is not None:
                shutil.copyfile(source, tmp)
            else:
                tmp.write_text(dump_run_config(self.config.raw))

    def model_record(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "run_config": self.config.raw,
            "kind": self.kind,
            "image_shape": list(self.data.image_shape),
            "step": self.step,
            "images_seen": self.step * self.batch,
            "ema": {k: v.detach().cpu() for k, v in self.ema.net.state_dict().items()},
        }

    @torch.no_grad()
    def evaluate_bins(self) -> list[dict[str, Any]]:
        """The EMA model's unweighted error at each bin centre on (a seeded subset of) the data."""
        net = self.ema.net.eval()
        model_fn = make_model_fn(net, self.config, self.device)
        g = torch.Generator().manual_seed(step_seed(self.config.seed, 0, 0, EVAL))
        n = min(self.options.eval_images, self.data.count)
        idx = torch.randperm(self.data.count, generator=g)[:n].sort().values
        noise = torch.Generator(device=self.device)
        batch = max(self.batch, 256)
        rows = []
        for k, lam in enumerate(adaptive_mod.bin_centres(self.edges).tolist()):
            errors = []
            for start in range(0, n, batch):
                chunk = idx[start : start + batch]
                x = model_input(self.data.batch(chunk, self.device), self.kind, self.device)
                noise.manual_seed(step_seed(self.config.seed, k, start, EVAL))
                lam_t = torch.full((x.shape[0],), lam, dtype=torch.float64, device=self.device)
                level = adaptive_mod.level_at(self.schedule, lam_t)
                errors.append(
                    adaptive_mod.evaluate_error(self.kind, model_fn, x, level, noise).double().cpu()
                )
            e = torch.cat(errors)
            stderr = float(e.std() / math.sqrt(len(e))) if len(e) > 1 else float("nan")
            rows.append({"log_snr": lam, "error": float(e.mean()), "stderr": stderr, "n": len(e)})
        return rows


def train(
    run_config: str | Path | RunConfig, out_dir: str | Path, options: TrainOptions | None = None
) -> TrainResult:
    """Train one run (resuming from its checkpoint if there is one); see the module docstring.

    Raises ``Preempted`` after checkpointing when SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT arrives.
    """
    options = options or TrainOptions()
    config_path = None if isinstance(run_config, RunConfig) else Path(run_config)
    config = run_config if isinstance(run_config, RunConfig) else load_run_config(run_config)
    dist_ = distributed_env()
    owns_group = dist_.world > 1 and not dist.is_initialized()
    if owns_group:
        backend = "nccl" if options.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist_.local_rank)
        dist.init_process_group(backend, rank=dist_.rank, world_size=dist_.world)
    try:
        return Trainer(config, Path(out_dir), options, config_path).run()
    finally:
        if owns_group:  # gloo/nccl abort at exit when the group is left open
            dist.destroy_process_group()


# -- loading a trained run ----------------------------------------------------------------------------


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


def load_run(run_dir: str | Path, device: str | torch.device = "auto") -> LoadedRun:
    """The final EMA model of a trained run directory (RUN_DIR/model.pt)."""
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UserError(f"run directory {run_dir} has no model.pt (train it first)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable model file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a diffobj model file")
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
