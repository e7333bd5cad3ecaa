"""Job states: one batched `sacct` call per status round, with fallbacks.

- `sacct` (accounting on): the authoritative final states (COMPLETED, FAILED, TIMEOUT,
  OUT_OF_MEMORY, CANCELLED, ...). A job not yet recorded counts as still active.
- accounting off (`sacct` fails): `squeue --states=all` for jobs the controller still
  knows, then submitit's result file for jobs it has forgotten.
- local backend: the controller process and submitit's result file.
"""

from __future__ import annotations

import getpass
import pickle
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Still queued or running (or about to run again): keep polling.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "PREEMPTED",
        "CONFIGURING",
        "COMPLETING",
        "RESIZING",
        "SUSPENDED",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
COMPLETED = "COMPLETED"
# submitit's result file said "error", or the job left the queue without one
FAILED = "FAILED"
VANISHED = "VANISHED"
PREEMPTED_NOT_REQUEUED = "PREEMPTED_NOT_REQUEUED"

_QUERY_TIMEOUT_S = 60


def normalize_state(raw: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'CANCELLED+' -> 'CANCELLED'."""
    words = raw.split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def parse_state_table(text: str, names: Mapping[str, str] | None = None) -> dict[str, str]:
    """`ID|NAME|STATE` lines (sacct --parsable2 / squeue --format) -> {id: state}.

    Only lines whose NAME is the name we gave the job count, when `names` ({id: name}) is
    given: a cluster whose controller state was reset hands out job ids again, and the
    accounting database still holds the old jobs under them. With requeued jobs sacct
    may print one line per run; the last is the current one."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3 or not fields[0]:
            continue
        job_id, name, state = fields
        if names is None or names.get(job_id) == name:
            states[job_id] = normalize_state(state)
    return states


def _run(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def sacct_states(names: Mapping[str, str]) -> dict[str, str] | None:
    """States of the jobs {id: name} from the accounting database, in one call; None when
    accounting is unavailable."""
    if not names:
        return {}
    result = _run(
        [
            "sacct",
            "--allocations",  # the job itself, not its steps
            "--noheader",
            "--parsable2",
            "--format=JobIDRaw,JobName,State",
            f"--jobs={','.join(sorted(names))}",
        ]
    )
    if result is None or result.returncode != 0:
        return None
    return parse_state_table(result.stdout, names)


def squeue_states(names: Mapping[str, str]) -> dict[str, str] | None:
    """States of this user's jobs that the controller still holds (incl. recently ended),
    or None when squeue fails (then nothing can be concluded this round)."""
    result = _run(
        [
            "squeue",
            "--noheader",
            "--states=all",
            "--format=%i|%j|%T",
            f"--user={getpass.getuser()}",
        ]
    )
    if result is None or result.returncode != 0:
        return None
    return parse_state_table(result.stdout, names)


def result_file_state(result_pickle: Path) -> str | None:
    """COMPLETED or FAILED from submitit's result file; None while there is none."""
    try:
        with result_pickle.open("rb") as f:
            outcome = pickle.load(f)[0]
    except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError):
        return None
    return COMPLETED if outcome == "success" else FAILED


def result_error_summary(result_pickle: Path) -> str | None:
    """The last line of the traceback in submitit's result file (why the job failed)."""
    try:
        with result_pickle.open("rb") as f:
            outcome, payload = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
        return None
    if outcome != "error":
        return None
    lines = [line.strip() for line in str(payload).splitlines() if line.strip()]
    return lines[-1] if lines else None


def slurm_states(names: Mapping[str, str], result_files: Mapping[str, Path]) -> dict[str, str]:
    """The current state of each job {id: name}; jobs left out are still active (or not yet
    recorded)."""
    states = sacct_states(names)
    if states is not None:
        return _settle_preempted(states, names)
    queued = squeue_states(names)
    if queued is None:
        return {}
    states = {}
    for job_id in names:
        if job_id in queued:
            states[job_id] = queued[job_id]
        else:
            states[job_id] = result_file_state(result_files[job_id]) or VANISHED
    return states


def _settle_preempted(states: dict[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """A preempted job is usually requeued (then it counts as active); one that the
    controller no longer holds as queued or running was not, and would be waited for
    forever."""
    preempted = [job_id for job_id, state in states.items() if state == "PREEMPTED"]
    if not preempted:
        return states
    queued = squeue_states({job_id: names[job_id] for job_id in preempted})
    if queued is None:
        return states
    for job_id in preempted:
        if queued.get(job_id, "PREEMPTED") == "PREEMPTED":
            states[job_id] = PREEMPTED_NOT_REQUEUED
    return states
