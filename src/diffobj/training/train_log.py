"""The training log: windows of the training error per fixed log-SNR bin, the log columns,
the live train_log.csv, its TensorBoard event stream and the progress line of a job log."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist

from diffobj.devices import Dist
from diffobj.errors import UserError
from diffobj.io import append_line, csv_line, write_csv
from diffobj.objectives.densities import bin_index

# train_log.csv: the scalar columns every consumer reads (binned errors follow them)
LOG_COLUMNS = ("step", "images_seen", "loss", "grad_norm", "lr", "images_per_s", "peak_mem_mb")


class BinWindow:
    """Sums of a per-sample value since the last log step, per log-SNR bin (the training error for
    the log; error - J*(lam) per sample for a gap density's refresh), and of the loss."""

    def __init__(self, edges: torch.Tensor, device: torch.device):
        self.edges = edges
        self.device = device
        self.reset()

    def reset(self) -> None:
        bins = len(self.edges) - 1
        self.error_sum = torch.zeros(bins, dtype=torch.float64, device=self.device)
        self.count = torch.zeros(bins, dtype=torch.float64, device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.grad_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps = 0

    def add(
        self,
        log_snr: torch.Tensor,
        error: torch.Tensor,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
    ) -> None:
        idx = bin_index(log_snr, self.edges)
        self.error_sum.index_add_(0, idx, error.detach().double())
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        self.loss_sum += loss.detach().double()
        self.grad_sum += grad_norm.detach().double()
        self.steps += 1

    def reduced(self, dist_: Dist) -> dict[str, torch.Tensor]:
        """The window summed over ranks (loss and grad norm: means over ranks)."""
        values = torch.cat([self.error_sum, self.count, self.loss_sum[None], self.grad_sum[None]])
        if dist_.world > 1:
            dist.all_reduce(values)
            values[-2:] /= dist_.world
        bins = len(self.edges) - 1
        return {
            "error_sum": values[:bins].cpu(),
            "count": values[bins : 2 * bins].cpu(),
            "loss_sum": values[-2].cpu(),
            "grad_sum": values[-1].cpu(),
        }

    def global_state(self, dist_: Dist) -> dict[str, Any]:
        """The window of all ranks (a collective call): sums of errors and counts, means of
        loss and grad norm; ``load_global_state`` spreads it over any number of ranks."""
        return {**self.reduced(dist_), "steps": self.steps}

    def load_global_state(self, state: dict[str, Any], dist_: Dist) -> None:
        """Rank 0 takes the sums, every rank the means, so ``reduced`` gives them back."""
        for k in ("error_sum", "count"):
            value = state[k].to(self.device, torch.float64)
            setattr(self, k, value if dist_.main else torch.zeros_like(value))
        for k in ("loss_sum", "grad_sum"):
            setattr(self, k, state[k].to(self.device, torch.float64))
        self.steps = int(state["steps"])


def bin_column(k: int) -> str:
    return f"error_bin_{k:02d}"


def log_columns(bins: int) -> list[str]:
    """The columns of train_log.csv: the scalars, then one error column per log-SNR bin."""
    return [*LOG_COLUMNS, *(bin_column(k) for k in range(bins))]


class LiveLog:
    """train_log.csv while the run trains, readable at any time: it starts (fresh or resumed)
    as the rows the checkpoint holds, written atomically -- rows logged after that checkpoint
    are dropped, as the run logs them again -- and grows by one whole line per log step.
    The same rows go to a TensorBoard event stream in the folder ``tensorboard/`` beside it."""

    def __init__(self, path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]):
        self.path, self.columns = path, list(columns)
        write_csv(path, rows, self.columns)
        self.events = EventLog(path.parent / TENSORBOARD_DIR, self.columns, rows)

    def append(self, row: dict[str, Any]) -> None:
        append_line(self.path, csv_line(row, self.columns))
        self.events.append(row)

    def close(self) -> None:
        self.events.close()

    def __enter__(self) -> LiveLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: `tensorboard --logdir results/EXP/runs`
EVENT_FILES = "events.out.tfevents.*"


def event_tag(column: str) -> str:
    """The TensorBoard tag of a train_log.csv column: ``train/loss``, ``train/lr``, ...,
    ``error_bin/00`` (TensorBoard draws the tags before each slash as one group)."""
    if column.startswith("error_bin_"):
        return f"error_bin/{column.removeprefix('error_bin_')}"
    return f"train/{column}"


class EventLog:
    """train_log.csv's rows as TensorBoard scalars (``torch.utils.tensorboard``): one per
    column at each log step, the training step as TensorBoard's step, flushed at every row.

    Each start (fresh or resumed) opens a new event file in the folder. When the folder already
    holds this run's earlier files, the new file starts with TensorBoard's purge (``purge_step``)
    just after the checkpoint's last row: rows logged after the checkpoint, which the run logs
    again, are dropped by TensorBoard, as they are from the CSV. A folder without event files
    (new, or a checkpoint brought from elsewhere) gets the checkpoint's rows written anew."""

    def __init__(self, folder: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # a core dependency; say what to install, not a traceback
            raise UserError(f"the TensorBoard log needs the tensorboard package ({err})") from None
        folder.mkdir(parents=True, exist_ok=True)
        earlier = event_file_seconds(folder)
        self.columns = [c for c in columns if c != "step"]
        if earlier:
            after_second(max(earlier))
            purge = int(rows[-1]["step"]) + 1 if rows else 0
            self.writer = SummaryWriter(str(folder), purge_step=purge)
        else:
            self.writer = SummaryWriter(str(folder))
            for row in rows:
                self._add(row)
        self.writer.flush()

    def append(self, row: dict[str, Any]) -> None:
        self._add(row)
        self.writer.flush()  # a watching TensorBoard sees each log step as it is logged

    def _add(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for column in self.columns:
            value = row[column]
            if value != "":  # a bin no sample fell in (an empty CSV cell): no point
                self.writer.add_scalar(event_tag(column), float(value), step)

    def close(self) -> None:
        self.writer.close()


def event_file_seconds(folder: Path) -> list[int]:
    """The second each event file in ``folder`` was made in (its name starts with it:
    events.out.tfevents.SECONDS.HOST.PID.N)."""
    fields = (p.name.split(".") for p in folder.glob(EVENT_FILES))
    return [int(f[3]) for f in fields if len(f) > 3 and f[3].isdigit()]


def after_second(second: int) -> None:
    """Wait, if need be, until the clock is past ``second``. TensorBoard reads a folder's files
    in the order of their names, and a purge must be read after the rows it purges; names made
    in one second sort by host and process id, so a new file gets a later second than the last.
    (Only a run resumed within a second of its start waits; a skewed clock is not waited for.)"""
    wait = second + 1 - time.time()
    if 0 < wait <= 1:
        time.sleep(wait)


PROGRESS_SECONDS = 30.0  # a job log gets a line at most this often (and at the last step)


class ProgressLine:
    """One plain line per log step, at most every ``every`` seconds and always at the last:
    for job logs, where a redrawn progress bar is noise. Says step, images/s, loss and ETA."""

    def __init__(
        self,
        run_id: str,
        steps: int,
        batch: int,
        every: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        file: TextIO | None = None,
    ):
        self.run_id, self.steps, self.batch, self.every = run_id, steps, batch, every
        self.clock, self.file = clock, file
        self.last: float | None = None

    def line(self, row: dict[str, Any]) -> str:
        rate = float(row["images_per_s"])
        left = (self.steps - int(row["step"])) * self.batch / rate if rate > 0 else math.nan
        return (
            f"{self.run_id}: step {row['step']}/{self.steps}, {rate:.0f} images/s, "
            f"loss {float(row['loss']):.4g}, ETA {format_duration(left)}"
        )

    def update(self, row: dict[str, Any]) -> None:
        now = self.clock()
        due = self.last is None or now - self.last >= self.every
        if due or int(row["step"]) >= self.steps:
            print(self.line(row), file=self.file or sys.stderr, flush=True)
            self.last = now


def format_duration(seconds: float) -> str:
    """h:mm:ss (or ? when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
