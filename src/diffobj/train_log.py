"""The training log: windows of the training error per fixed log-SNR bin, the log columns,
the live train_log.csv and the progress line of a job log."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist

from diffobj.densities import bin_index
from diffobj.devices import Dist
from diffobj.io import append_line, csv_line, write_csv

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
    are dropped, as the run logs them again -- and grows by one whole line per log step."""

    def __init__(self, path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]):
        self.path, self.columns = path, list(columns)
        write_csv(path, rows, self.columns)

    def append(self, row: dict[str, Any]) -> None:
        append_line(self.path, csv_line(row, self.columns))


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
