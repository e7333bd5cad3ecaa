"""The training log: windows of the training error per fixed log-SNR bin, and the log columns."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from diffobj.densities import bin_index
from diffobj.devices import Dist

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
