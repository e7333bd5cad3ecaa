"""What runs inside the cluster job: the Snakemake job command, with walltime handling.

submitit pickles a `JobCommand`, and on the compute node `python -m submitit.core._submit`
loads and calls it. The command (Snakemake's own `python -m snakemake --target-jobs ...`
line) runs as a child process whose output goes straight to the submitit log of the task.

Walltime: SLURM sends submitit's signal (SIGUSR2) `signal_delay_s` before the limit, to
every process of the job step. The child ignores it (see `_IGNORED_IN_CHILD`); this
process handles it:

- resumable job (`resources: resumable=1`): forward SIGUSR1 to the child's process group,
  so the job's own command (e.g. `diffobj train`) checkpoints and exits (code 3 by
  convention); then hand over to submitit, which calls `checkpoint()` (this object again,
  unchanged) and requeues the job: the same command runs again and resumes from its
  checkpoint, which lives outside Snakemake's outputs. submitit counts the requeues
  (`--submitit-max-requeues`).
- not resumable: keep running; if the command does not finish in time SLURM kills the job
  at the limit and its state is TIMEOUT (not FAILED), which the executor reports as such.

Several tasks (gpu > 1, or tasks_per_node > 1): every task runs the command with
MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE set from the
SLURM environment (submitit.helpers.TorchDistributedEnvironment), so the command can call
`torch.distributed.init_process_group()` and use device `cuda:$LOCAL_RANK`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import submitit
from submitit.core.job_environment import JobEnvironment

# The signal a resumable command receives to checkpoint (the `diffobj train` contract).
CHECKPOINT_SIGNAL = signal.SIGUSR1
# Exit code of a command that checkpointed and asks to be run again (documentation only:
# Snakemake turns any non-zero exit of the rule into its own exit code 1).
REQUEUE_EXIT_CODE = 3
# SLURM signals every process of the step; the intermediate processes (sh, snakemake,
# the rule's shell) would die of SIGUSR1/SIGUSR2, so the child starts with both ignored.
# A command that wants SIGUSR1 installs its handler explicitly (Python's signal.signal
# does; a bash `trap` cannot catch a signal ignored on entry).
_IGNORED_IN_CHILD = "trap '' USR1 USR2"
# After SIGTERM (cancellation, end of walltime), give the command this long before SIGKILL.
_TERMINATE_GRACE_S = 10.0
_POLL_S = 0.2


def _log(message: str) -> None:
    print(f"[submitit executor] {message}", file=sys.stderr, flush=True)


class JobCommand(submitit.helpers.Checkpointable):
    """A shell command run as one submitit job (one task per process of the job).

    Parameters
    ----------
    command: the shell command (Snakemake's job command).
    cwd: the working directory (the workflow's).
    resumable: on the walltime signal, checkpoint (SIGUSR1) and requeue.
    checkpoint_grace_s: how long the command may take to checkpoint and exit.
    """

    def __init__(
        self, command: str, cwd: str, resumable: bool = False, checkpoint_grace_s: float = 60.0
    ) -> None:
        self.command = command
        self.cwd = cwd
        self.resumable = resumable
        self.checkpoint_grace_s = checkpoint_grace_s
        self._child: subprocess.Popen[bytes] | None = None
        self._received: list[int] = []

    # pickled at submission and again at checkpoint time: never the running child
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_child"] = None
        state["_received"] = []
        return state

    def __call__(self) -> None:
        env = JobEnvironment()
        if env.num_tasks > 1:
            dist = submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
            _log(
                f"torch.distributed: rank {dist.rank}/{dist.world_size}, local rank "
                f"{dist.local_rank}, master {dist.master_addr}:{dist.master_port}"
            )
        walltime_signal = env._usr_sig()
        requeue = signal.getsignal(walltime_signal)  # submitit's checkpoint-and-requeue
        for signum in (walltime_signal, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._remember)

        self._child = subprocess.Popen(
            f"{_IGNORED_IN_CHILD}; {self.command}",
            shell=True,
            cwd=self.cwd,
            start_new_session=True,  # its own process group: signals reach the whole tree
        )
        terminated = False
        while self._child.poll() is None:
            while self._received:
                signum = self._received.pop(0)
                if signum == walltime_signal:
                    self._on_walltime(signum, requeue)
                elif not terminated:
                    terminated = True
                    _log(f"caught {signal.Signals(signum).name}: stopping the job command")
                    self._stop_child(signal.SIGTERM, _TERMINATE_GRACE_S)
            time.sleep(_POLL_S)
        code = self._child.returncode
        if code != 0:
            raise RuntimeError(f"the job command exited with status {code}")

    def _remember(self, signum: int, frame: Any) -> None:
        # Only record: the main loop acts, so a signal never interrupts a half-done step.
        self._received.append(signum)

    def _on_walltime(self, signum: int, requeue: Any) -> None:
        if not self.resumable:
            _log(
                "walltime signal: this job is not resumable (resources: resumable=0), so it "
                "keeps running and is killed if it reaches its time limit"
            )
            return
        _log(
            f"walltime signal: sending {CHECKPOINT_SIGNAL.name} so the command checkpoints, "
            "then requeueing"
        )
        self._stop_child(CHECKPOINT_SIGNAL, self.checkpoint_grace_s)
        code = self._child.returncode if self._child else None
        if code == 0:
            _log("the command finished before the time limit: not requeueing")
            return
        _log(f"the command exited with status {code} after the signal")
        # submitit: calls self.checkpoint() (this object, resubmitted as is), requeues
        # the job (scontrol requeue) and exits; or raises if the requeues are used up.
        requeue(signum, None)

    def _stop_child(self, signum: int, grace_s: float) -> None:
        """Send `signum` to the child's process group; SIGKILL it after `grace_s`."""
        child = self._child
        if child is None or child.poll() is not None:
            return
        _signal_group(child.pid, signum)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _log(f"the command did not exit {grace_s:.0f} s after {signum}: killing it")
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has exited already
        os.killpg(pgid, signum)
