"""Checkpoints and signals: a signal only sets a flag; the checkpoint is written atomically at the
next step boundary, then the job exits with a code the executor understands (train.py's docstring).
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffobj.devices import Dist
from diffobj.errors import UserError
from diffobj.io import atomic_path

EXIT_PREEMPTED = 3
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C: the shell's code for it
EXIT_CODES = {
    signal.SIGUSR1: EXIT_PREEMPTED,
    signal.SIGUSR2: EXIT_PREEMPTED,
    signal.SIGTERM: EXIT_TERMINATED,
    signal.SIGINT: EXIT_INTERRUPTED,
}
CHECKPOINT_NAME = "latest.pt"
CHECKPOINT_FORMAT = "diffobj-checkpoint-v1"
SIGNAL_POLL_STEPS = 10  # DDP: ranks agree on "a signal arrived" every this many steps


class Preempted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Training stopped on a signal after writing its checkpoint; exit with ``code``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.code = EXIT_CODES[signum]
        self.step = step
        super().__init__(
            f"{signal.Signals(signum).name} received: checkpoint at step {step} in {checkpoint}; "
            f"exiting with code {self.code} (rerun the same command to resume)"
        )


class SignalFlag:
    """Records SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT; the loop checkpoints at the next step
    boundary. A second Ctrl-C stops at once, as a user pressing it twice expects (KeyboardInterrupt:
    the checkpoint on disk is the last whole one)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @contextmanager
    def installed(self) -> Iterator[SignalFlag]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self  # handlers can only be installed from the main thread
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def agreed(self, dist_: Dist, device: torch.device) -> int | None:
        """The signal any rank received (DDP ranks must stop at the same step)."""
        if dist_.world == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


def checkpoint_dir_for(out_dir: Path, run_id: str, override: str | Path | None) -> Path:
    if override:
        return Path(override)
    root = os.environ.get("DIFFOBJ_CHECKPOINT_DIR")
    return Path(root) / run_id if root else out_dir / "checkpoints"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: the file is always whole or absent."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a checkpoint is never half-written, so this is a foreign file
        raise UserError(
            f"{path}: not a readable checkpoint ({err}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a diffobj checkpoint; delete it to start over")
    return state


def drop_checkpoint(path: Path) -> None:
    """Delete a finished run's checkpoint, and its folder once empty. Call it only after the
    final outputs are written: until then the checkpoint is what a rerun resumes from."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a folder holding other files stays
        path.parent.rmdir()


def comparable_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A run config without the keys a resume may change (more steps, other logging, whether
    the checkpoint outlives the run)."""
    raw = copy.deepcopy(raw)
    for key in ("steps", "checkpoint_every", "log_every", "keep_checkpoint"):
        raw.get("training", {}).pop(key, None)
    return raw
