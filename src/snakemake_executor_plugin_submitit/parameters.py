"""Snakemake resources -> submitit parameters (pure functions, no Snakemake, no SLURM).

| resource           | SLURM (sbatch)                      | local backend      |
| ------------------ | ----------------------------------- | ------------------ |
| runtime (minutes)  | --time                              | timeout_min        |
| mem_mb             | --mem                               | (ignored)          |
| mem_mb_per_cpu     | --mem-per-cpu                       | (ignored)          |
| threads            | --cpus-per-task                     | (ignored)          |
| gpu                | --gpus-per-node (or --gres with     | gpus_per_node      |
|                    |   gpu_model: gpu:MODEL:N)           |                    |
| nodes              | --nodes                             | (must be 1)        |
| tasks_per_node     | --ntasks-per-node (default: gpu     | tasks_per_node     |
|                    |   when gpu > 1, else 1)             |                    |
| slurm_partition    | --partition                         | (ignored)          |
| slurm_account      | --account                           | (ignored)          |
| qos, constraint    | --qos, --constraint                 | (ignored)          |
| slurm_extra        | any further long sbatch options     | (ignored)          |
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from snakemake_interface_common.exceptions import WorkflowError

# Used when a rule has no `runtime` (submitit would otherwise silently use 5 minutes).
FALLBACK_RUNTIME_MIN = 60

# sbatch options the plugin sets itself: slurm_extra must not override them, since the
# status checks, logs and signal handling rely on them.
RESERVED_SBATCH_OPTIONS = frozenset(
    {"job-name", "output", "error", "open-mode", "signal", "array", "wrap", "parsable"}
)


def _as_int(resources: Mapping[str, Any], name: str, default: int, where: str) -> int:
    value = resources.get(name, default)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WorkflowError(
            f"{where}: resource {name}={value!r} is not a whole number"
            + (" of minutes" if name == "runtime" else "")
        ) from None


def runtime_minutes(resources: Mapping[str, Any], where: str) -> int | None:
    """The walltime in minutes, or None when the rule sets no runtime."""
    if resources.get("runtime") is None:
        return None
    minutes = _as_int(resources, "runtime", 0, where)
    if minutes < 1:
        raise WorkflowError(f"{where}: resource runtime={minutes} must be at least 1 minute")
    return minutes


def effective_signal_delay(signal_delay_s: int, runtime_min: int) -> int:
    """The walltime signal comes `signal_delay_s` before the limit, but never in the first
    half of the job: a delay as long as the walltime would signal (and requeue) at once."""
    return max(1, min(int(signal_delay_s), runtime_min * 60 // 2))


def tasks_per_node(resources: Mapping[str, Any], where: str) -> int:
    """One task per GPU when a job asks for several GPUs (torch.distributed), else one."""
    gpus = _as_int(resources, "gpu", 0, where)
    default = gpus if gpus > 1 else 1
    return max(1, _as_int(resources, "tasks_per_node", default, where))


def parse_slurm_extra(extra: str, where: str) -> dict[str, Any]:
    """`--gres=gpu:2 --exclusive --mail-type END` -> {"gres": "gpu:2", "exclusive": True,
    "mail-type": "END"}: submitit writes each as one `#SBATCH --key[=value]` line."""
    options: dict[str, Any] = {}
    words = shlex.split(extra)
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or word == "--":
            raise WorkflowError(
                f"{where}: slurm_extra={extra!r}: cannot pass {word!r}; "
                "write sbatch options in their long form, e.g. --gres=gpu:2 or --exclusive"
            )
        key, has_value, value = word[2:].partition("=")
        if not has_value:
            # `--key value` unless the next word is another option (then `--key` is a flag)
            if i + 1 < len(words) and not words[i + 1].startswith("-"):
                value, i = words[i + 1], i + 1
            else:
                value = True
        if key in RESERVED_SBATCH_OPTIONS:
            raise WorkflowError(
                f"{where}: slurm_extra={extra!r}: --{key} is set by the submitit executor "
                "itself (it names the job, its log and its walltime signal)"
            )
        options[key] = value
        i += 1
    return options


def slurm_parameters(
    resources: Mapping[str, Any],
    threads: int,
    *,
    job_name: str,
    signal_delay_s: int,
    where: str,
) -> dict[str, Any]:
    """Keyword arguments for submitit.SlurmExecutor.update_parameters."""
    gpus = _as_int(resources, "gpu", 0, where)
    runtime = runtime_minutes(resources, where) or FALLBACK_RUNTIME_MIN
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": runtime,
        "nodes": _as_int(resources, "nodes", 1, where),
        "ntasks_per_node": tasks_per_node(resources, where),
        "cpus_per_task": max(1, int(threads)),
        "signal_delay_s": effective_signal_delay(signal_delay_s, runtime),
        # one log per task with the command's stdout and stderr interleaved
        "stderr_to_stdout": True,
    }
    if resources.get("mem_mb_per_cpu") is not None:
        params["mem_per_cpu"] = f"{_as_int(resources, 'mem_mb_per_cpu', 0, where)}M"
    elif resources.get("mem_mb") is not None:
        params["mem"] = f"{_as_int(resources, 'mem_mb', 0, where)}M"
    if gpus > 0:
        if resources.get("gpu_model"):
            params["gres"] = f"gpu:{resources['gpu_model']}:{gpus}"
        else:
            params["gpus_per_node"] = gpus
    for resource, parameter in (
        ("slurm_partition", "partition"),
        ("slurm_account", "account"),
        ("qos", "qos"),
        ("constraint", "constraint"),
    ):
        if resources.get(resource):
            params[parameter] = str(resources[resource])
    if resources.get("slurm_extra"):
        params["additional_parameters"] = parse_slurm_extra(str(resources["slurm_extra"]), where)
    return params


def local_parameters(
    resources: Mapping[str, Any], *, signal_delay_s: int, where: str
) -> dict[str, Any]:
    """Keyword arguments for submitit.LocalExecutor.update_parameters (one machine)."""
    if _as_int(resources, "nodes", 1, where) > 1:
        raise WorkflowError(f"{where}: the local backend runs on one machine; nodes must be 1")
    runtime = runtime_minutes(resources, where) or FALLBACK_RUNTIME_MIN
    return {
        "timeout_min": runtime,
        "gpus_per_node": _as_int(resources, "gpu", 0, where),
        "tasks_per_node": tasks_per_node(resources, where),
        "signal_delay_s": effective_signal_delay(signal_delay_s, runtime),
        "stderr_to_stdout": True,
    }


def is_resumable(resources: Mapping[str, Any]) -> bool:
    """A job is resumable when its rule sets `resumable=1`: its command checkpoints on
    SIGUSR1 and resumes from that checkpoint when run again."""
    value = resources.get("resumable", 0)
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)
