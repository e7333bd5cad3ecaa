"""The training loop: resume, steps, logging cadence, checkpoints and signals, outputs."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffobj.devices import device_description, gpu_switches, peak_memory_mb
from diffobj.models import count_parameters
from diffobj.training.checkpoint import SIGNAL_POLL_STEPS, Preempted, SignalFlag, drop_checkpoint
from diffobj.training.outputs import write_outputs
from diffobj.training.setup import Setup
from diffobj.training.step import log_step, refresh_density, train_step
from diffobj.training.train_log import LiveLog, ProgressLine, log_columns


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    images_per_s: float
    peak_mem_mb: float
    log_rows: list[dict[str, Any]] = field(default_factory=list)


def run(s: Setup) -> TrainResult:
    """Train to ``training.steps`` (resuming from the checkpoint), then write the outputs."""
    steps = int(s.config.training["steps"])
    flag = SignalFlag()
    with flag.installed():  # from here on a signal means "checkpoint at the next step boundary"
        resumed = s.state.resume(s.checkpoint_path)
        announce(s, resumed)
        stopped, images, seconds = loop(s, steps, flag)
    peak = peak_memory_mb(s.device)
    rate = images / seconds if seconds else float("nan")
    if stopped:
        return TrainResult(s.out_dir, s.state.step, rate, peak, s.state.log_rows)
    if s.dist.main:
        write_outputs(s)
        if not s.config.training.get("keep_checkpoint", False):
            drop_checkpoint(s.checkpoint_path)  # only now: the outputs are whole
        print(
            f"{s.config.run_id}: {steps} steps, {rate:.1f} images/s, peak memory "
            f"{peak:.0f} MB ({'GPU' if s.device.type == 'cuda' else 'CPU RSS'}); "
            f"outputs in {s.out_dir}",
            file=sys.stderr,
        )
    if s.dist.world > 1:
        dist.barrier()
    return TrainResult(s.out_dir, s.state.step, rate, peak, s.state.log_rows)


class Cadence:
    """The log steps of the loop: the timing window, the bar, the live log, the progress line."""

    def __init__(self, s: Setup, steps: int, bar: Any, live: LiveLog | None):
        self.s, self.bar, self.live = s, bar, live
        plain = s.dist.main and bar.disable  # a plain progress line where no bar is drawn
        self.progress = ProgressLine(s.config.run_id, steps, s.batch) if plain else None
        self.images, self.seconds = 0, 0.0  # trained in the loop, in all
        self.restart()

    def restart(self) -> None:
        self.start, self.start_step = time.perf_counter(), self.s.state.step

    def log(self) -> None:
        s = self.s
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        seconds = time.perf_counter() - self.start
        images = (s.state.step - self.start_step) * s.batch
        self.images, self.seconds = self.images + images, self.seconds + seconds
        row = log_step(s, seconds, images)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", img_s=f"{row['images_per_s']:.0f}")
        if self.live is not None:
            self.live.append(row)
        if self.progress is not None:
            self.progress.update(row)
        self.restart()


def loop(s: Setup, steps: int, flag: SignalFlag) -> tuple[bool, int, float]:
    """Train to ``steps``; returns (stopped early, images trained, seconds in the loop)."""
    state, training, options = s.state, s.config.training, s.options
    log_every, checkpoint_every = int(training["log_every"]), int(training["checkpoint_every"])
    bar = progress_bar(s, steps)
    live = live_log(s) if s.dist.main else None  # the log readable while the run trains
    with bar, live or nullcontext():
        cadence = Cadence(s, steps, bar, live)
        while state.step < steps:
            train_step(s)
            bar.update(1)
            if state.step % log_every == 0 or state.step == steps:
                cadence.log()
            if state.density is not None and state.step % options.adaptive_refresh == 0:
                refresh_density(s)
            if state.step % checkpoint_every == 0 or state.step == steps:
                state.save(s.checkpoint_path)
            received = poll_signal(s, flag)
            if received is not None and state.step < steps:
                state.save(s.checkpoint_path)
                raise Preempted(received, state.step, s.checkpoint_path)
            if options.stop_after is not None and state.step >= options.stop_after:
                state.save(s.checkpoint_path)
                return True, cadence.images, cadence.seconds
    return False, cadence.images, cadence.seconds


def progress_bar(s: Setup, steps: int):
    from tqdm import tqdm

    return tqdm(
        total=steps,
        initial=s.state.step,
        desc=s.config.run_id,
        unit="step",
        disable=not (s.options.progress and s.dist.main),
        mininterval=1.0,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def live_log(s: Setup) -> LiveLog:
    s.out_dir.mkdir(parents=True, exist_ok=True)
    columns = log_columns(len(s.edges) - 1)
    return LiveLog(s.out_dir / "train_log.csv", columns, s.state.log_rows)


def poll_signal(s: Setup, flag: SignalFlag) -> int | None:
    if s.dist.world > 1 and s.state.step % SIGNAL_POLL_STEPS:
        return None
    return flag.agreed(s.dist, s.device)


def announce(s: Setup, resumed: bool) -> None:
    if not s.dist.main:
        return
    params = count_parameters(s.state.net)
    switches = gpu_switches(s.device)
    precision = s.config.training.get("precision", "fp32") if switches else "fp32"
    where = f"resuming at step {s.state.step}" if resumed else "from scratch"
    print(
        f"{s.config.run_id}: {s.config.kind}, {params / 1e6:.2f}M parameters, "
        f"device {device_description(s.device)}, {precision}, world size {s.dist.world}, "
        f"{s.data.count} images {s.data.image_shape}, {where} "
        f"(checkpoints in {s.checkpoint_path.parent})",
        file=sys.stderr,
    )
