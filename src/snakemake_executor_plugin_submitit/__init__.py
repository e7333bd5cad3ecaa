"""Snakemake executor plugin: run jobs through submitit, on SLURM or on this machine.

    snakemake --executor submitit --jobs 100            # SLURM (sbatch through submitit)
    snakemake --executor submitit --submitit-backend local --jobs 2
    snakemake --profile slurm                           # slurm/config.yaml sets all this

Snakemake finds the plugin by its module name (`snakemake_executor_plugin_*`). Each job
is one submitit job running Snakemake's job command (`format_job_exec`) inside a
`JobCommand` (see jobcommand.py for walltime, requeue and multi-GPU); parameters.py maps
the rule's resources to sbatch options; states.py reads job states (one `sacct` per round).
docs/slurm.md is the user guide.
"""

# no `from __future__ import annotations`: the settings dataclass field types must be
# real types, snakemake turns them into argparse converters.
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from . import config_errors, parameters, states
from .jobcommand import CHECKPOINT_SIGNAL, JobCommand

# Snakemake imports this plugin while it reads its command line: the spec's errors get one line
config_errors.install()

BACKENDS = ("slurm", "local")


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    backend: str = field(
        default="slurm",
        metadata={
            "help": "Where submitit runs the jobs: 'slurm' (sbatch) or 'local' (processes "
            "on this machine, same code path, for testing without a cluster).",
            "choices": list(BACKENDS),
            "env_var": False,
            "required": False,
        },
    )
    log_folder: Path = field(
        default=Path(".snakemake/submitit"),
        metadata={
            "help": "Folder of the submitit files: batch scripts, pickles and one log per "
            "job task (<folder>/rule_<name>/<jobid>_<task>_log.out). Must be on the shared "
            "file system.",
            "env_var": False,
            "required": False,
        },
    )
    signal_delay_s: int = field(
        default=120,
        metadata={
            "help": "Seconds before the walltime at which a job gets the signal to "
            "checkpoint (resumable jobs then get SIGUSR1 and are requeued). SLURM delivers "
            "it up to about a minute late, so keep it well above the checkpoint time.",
            "env_var": False,
            "required": False,
        },
    )
    max_requeues: int = field(
        default=10,
        metadata={
            "help": "How many times a resumable job may be requeued at its walltime before "
            "it fails.",
            "env_var": False,
            "required": False,
        },
    )


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    # sbatch exports the submitting environment (--export=ALL), the local backend inherits it
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=0,
    pass_group_args=True,
)


class Executor(RemoteExecutor):
    def __post_init__(self) -> None:
        self.settings: ExecutorSettings = self.workflow.executor_settings
        if self.settings.backend not in BACKENDS:
            raise WorkflowError(
                f"--submitit-backend {self.settings.backend!r}: choose one of {BACKENDS}"
            )
        if self.settings.backend == "slurm" and not _has_slurm():
            raise WorkflowError(
                "--executor submitit: no SLURM here (sbatch/srun not found on PATH). On a "
                "machine without SLURM use --submitit-backend local, or start the test "
                "cluster with scripts/slurm-cluster.sh start."
            )
        if self.settings.signal_delay_s < 1:
            raise WorkflowError(
                f"--submitit-signal-delay-s {self.settings.signal_delay_s}: must be >= 1"
            )
        self.log_root = Path(self.settings.log_folder).expanduser().resolve()
        self.run_token = uuid.uuid4().hex[:8]
        # Every submitted, unfinished job: cancel_jobs must reach jobs that the status
        # thread holds at the moment of Ctrl-C (RemoteExecutor.active_jobs misses those).
        self._unfinished: dict[str, SubmittedJobInfo] = {}
        self._unfinished_lock = threading.Lock()

    # ---- submission ------------------------------------------------------------------

    def run_job(self, job: JobExecutorInterface) -> None:
        where = f"{'group' if job.is_group() else 'rule'} {job.name} (jobid {job.jobid})"
        folder = self.log_root / (f"group_{job.name}" if job.is_group() else f"rule_{job.name}")
        runtime = parameters.runtime_minutes(job.resources, where)
        if runtime is None:
            self.logger.warning(
                f"{where} sets no runtime: submitting with "
                f"{parameters.FALLBACK_RUNTIME_MIN} min. Set default-resources runtime in "
                "the profile, or resources: runtime=... in the rule."
            )
        runtime = runtime or parameters.FALLBACK_RUNTIME_MIN
        resumable = parameters.is_resumable(job.resources)
        # unique to this run: sacct must not confuse the job with an older one of the same id
        job_name = f"smk-{job.name}-{job.jobid}-{self.run_token}"
        executor = self._submitit_executor(folder)
        executor.update_parameters(**self._parameters(job, job_name, where))
        delay = parameters.effective_signal_delay(self.settings.signal_delay_s, runtime)
        command = JobCommand(
            self.format_job_exec(job),
            cwd=os.getcwd(),
            resumable=resumable,
            # checkpointing may use half of the time left after the signal
            checkpoint_grace_s=delay / 2,
        )
        try:
            # a SLURM_* environment (snakemake itself inside a job) would leak into sbatch
            with submitit.helpers.clean_env():
                submitted = executor.submit(command)
        except Exception as e:
            raise WorkflowError(f"{where}: submission through submitit failed: {e}") from e
        log = submitted.paths.stdout
        self.logger.info(
            f"Job {job.jobid} ({job.name}) submitted as {self.settings.backend} job "
            f"{submitted.job_id}, log: {log}"
        )
        info = SubmittedJobInfo(
            job,
            external_jobid=str(submitted.job_id),
            aux={
                "submitit_job": submitted,
                "job_name": job_name,
                "log": log,
                "runtime_min": runtime,
                "resumable": resumable,
                "submitted_at": time.time(),
            },
        )
        with self._unfinished_lock:
            self._unfinished[info.external_jobid] = info
        self.report_job_submission(info)

    def _submitit_executor(self, folder: Path) -> submitit.core.core.PicklingExecutor:
        if self.settings.backend == "local":
            return submitit.LocalExecutor(folder, max_num_timeout=self.settings.max_requeues)
        return submitit.SlurmExecutor(folder, max_num_timeout=self.settings.max_requeues)

    def _parameters(self, job: JobExecutorInterface, job_name: str, where: str) -> dict[str, Any]:
        delay = self.settings.signal_delay_s
        if self.settings.backend == "local":
            return parameters.local_parameters(job.resources, signal_delay_s=delay, where=where)
        return parameters.slurm_parameters(
            job.resources,
            job.threads,
            job_name=job_name,
            signal_delay_s=delay,
            where=where,
        )

    # ---- status ------------------------------------------------------------------------

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        if not active_jobs:
            return
        async with self.status_rate_limiter:
            current = self._query_states(active_jobs)
        for info in active_jobs:
            state = current.get(info.external_jobid)
            if state is None or state in states.ACTIVE_STATES:
                yield info
                continue
            with self._unfinished_lock:
                self._unfinished.pop(info.external_jobid, None)
            if state == states.COMPLETED:
                self.report_job_success(info)
            else:
                self.report_job_error(
                    info, msg=self._failure_message(info, state), aux_logs=[str(info.aux["log"])]
                )

    def _query_states(self, jobs: list[SubmittedJobInfo]) -> dict[str, str]:
        if self.settings.backend == "local":
            return {info.external_jobid: _local_state(info) for info in jobs}
        names = {info.external_jobid: info.aux["job_name"] for info in jobs}
        result_files = {
            info.external_jobid: info.aux["submitit_job"].paths.result_pickle for info in jobs
        }
        return states.slurm_states(names, result_files)

    def _failure_message(self, info: SubmittedJobInfo, state: str) -> str:
        runtime = info.aux["runtime_min"]
        summary = states.result_error_summary(info.aux["submitit_job"].paths.result_pickle)
        if state == "TIMEOUT":
            why = f"it reached its walltime (runtime={runtime} min)"
            if not info.aux["resumable"]:
                why += (
                    " and is not resumable, so it was not requeued. Give it more time (e.g. "
                    "runtime=lambda wildcards, attempt: ... with --retries), or make it "
                    f"resumable: resources: resumable=1 for a command that checkpoints on "
                    f"{CHECKPOINT_SIGNAL.name} and resumes"
                )
        elif summary and "timed-out too many times" in summary:
            state = "TIMEOUT"
            why = (
                f"it reached its walltime (runtime={runtime} min) more than "
                f"--submitit-max-requeues={self.settings.max_requeues} times"
            )
        elif state == "OUT_OF_MEMORY":
            why = "it ran out of memory (raise resources: mem_mb)"
        elif state == "CANCELLED":
            why = "it was cancelled (scancel, preemption or the time limit of the local backend)"
        elif state == states.VANISHED:
            why = "it left the queue without a result (killed, node failure, or purged)"
        elif state == states.PREEMPTED_NOT_REQUEUED:
            why = "it was preempted and not requeued by SLURM"
        elif state == "FAILED":
            why = "its command failed"
        else:
            why = f"see `sacct -j {info.external_jobid}`"
        if summary and "timed-out too many times" not in summary:
            why += f" ({summary})"
        backend = "SLURM" if self.settings.backend == "slurm" else "local submitit"
        return (
            f"{backend} job {info.external_jobid} ended in state {state}: {why}. "
            f"Job log: {info.aux['log']}. "
        )

    # ---- cancellation ------------------------------------------------------------------

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        with self._unfinished_lock:
            jobs = {info.external_jobid: info for info in active_jobs}
            jobs.update(self._unfinished)
            self._unfinished.clear()
        if not jobs:
            return
        if self.settings.backend == "local":
            for info in jobs.values():
                info.aux["submitit_job"].cancel(check=False)
            return
        try:
            subprocess.run(["scancel", *sorted(jobs)], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            self.logger.warning(
                f"scancel {' '.join(sorted(jobs))} failed: {e} {detail.decode().strip()}"
            )


def _has_slurm() -> bool:
    from shutil import which

    return which("sbatch") is not None and which("srun") is not None


def _local_state(info: SubmittedJobInfo) -> str:
    """State of a local-backend job: its controller process, then submitit's result file."""
    job = info.aux["submitit_job"]
    if job.get_info().get("jobState") == "RUNNING":
        return "RUNNING"
    outcome = states.result_file_state(job.paths.result_pickle)
    if outcome is not None:
        return outcome
    # killed without a result: by the local time limit, or cancelled
    elapsed_min = (time.time() - info.aux["submitted_at"]) / 60
    return "TIMEOUT" if elapsed_min >= info.aux["runtime_min"] else "CANCELLED"
