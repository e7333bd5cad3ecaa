"""The submitit executor plugin without a cluster: resources -> sbatch options, state parsing,
and whole Snakemake runs on submitit's local backend (same code path as SLURM)."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
from submitit.core.utils import cloudpickle_dump

from snakemake_executor_plugin_submitit import parameters, states
from snakemake_executor_plugin_submitit.jobcommand import JobCommand

COUNTER = Path(__file__).with_name("checkpoint_counter.py")
LOCAL_RUN = [
    *(sys.executable, "-m", "snakemake"),
    *("--executor", "submitit", "--submitit-backend", "local", "--jobs", "2"),
    *("--seconds-between-status-checks", "1", "--latency-wait", "5"),
]
SUBMITTED = re.compile(r"Job \d+ \((\w+)\) submitted as local job (\d+), log: (\S+)")


# ---- registration ---------------------------------------------------------------------------


def test_snakemake_finds_the_plugin_and_its_settings():
    plugin = ExecutorPluginRegistry().get_plugin("submitit")
    cli_args = {setting["cliarg"] for setting in plugin.get_settings_info()}
    assert {
        "--submitit-backend",
        "--submitit-log-folder",
        "--submitit-signal-delay-s",
        "--submitit-max-requeues",
    } <= cli_args


# ---- resources -> submitit parameters --------------------------------------------------------


def test_resources_become_sbatch_options():
    resources = {
        "runtime": 90,
        "mem_mb": 16000,
        "gpu": 1,
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "qos": "high",
        "constraint": "a100",
        "slurm_extra": "--exclusive --mail-type END --comment='two words'",
    }
    params = parameters.slurm_parameters(
        resources, threads=8, job_name="smk-train-3", signal_delay_s=120, where="rule train"
    )
    assert params == {
        "job_name": "smk-train-3",
        "time": 90,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 8,
        "signal_delay_s": 120,
        "stderr_to_stdout": True,
        "mem": "16000M",
        "gpus_per_node": 1,
        "partition": "gpu",
        "account": "proj",
        "qos": "high",
        "constraint": "a100",
        "additional_parameters": {"exclusive": True, "mail-type": "END", "comment": "two words"},
    }


def test_several_gpus_mean_one_task_per_gpu():
    params = parameters.slurm_parameters(
        {"runtime": 60, "gpu": 4, "gpu_model": "h100", "nodes": 2},
        threads=6,
        job_name="j",
        signal_delay_s=60,
        where="rule train",
    )
    assert (params["nodes"], params["ntasks_per_node"], params["cpus_per_task"]) == (2, 4, 6)
    assert params["gres"] == "gpu:h100:4" and "gpus_per_node" not in params


def test_signal_never_comes_in_the_first_half_of_the_walltime():
    assert parameters.effective_signal_delay(120, runtime_min=60) == 120
    assert parameters.effective_signal_delay(120, runtime_min=2) == 60
    assert parameters.effective_signal_delay(120, runtime_min=1) == 30


def test_missing_runtime_falls_back_and_bad_values_are_named():
    params = parameters.local_parameters({}, signal_delay_s=10, where="rule a")
    assert params["timeout_min"] == parameters.FALLBACK_RUNTIME_MIN
    with pytest.raises(WorkflowError, match=r"rule a: resource runtime='soon'"):
        parameters.slurm_parameters(
            {"runtime": "soon"}, 1, job_name="j", signal_delay_s=1, where="rule a"
        )
    with pytest.raises(WorkflowError, match="--output is set by the submitit executor"):
        parameters.parse_slurm_extra("--output=x.log", where="rule a")
    with pytest.raises(WorkflowError, match="long form"):
        parameters.parse_slurm_extra("-C a100", where="rule a")
    with pytest.raises(WorkflowError, match="nodes must be 1"):
        parameters.local_parameters({"nodes": 2}, signal_delay_s=1, where="rule a")


@pytest.mark.parametrize(
    ("value", "expected"), [(1, True), (0, False), ("yes", True), ("0", False), (None, False)]
)
def test_resumable_resource(value, expected):
    assert parameters.is_resumable({"resumable": value}) is expected


# ---- states ------------------------------------------------------------------------------


def test_state_table_keeps_the_current_state_of_each_job():
    text = (
        "12|a|REQUEUED\n12|a|COMPLETED\n13|b|CANCELLED by 0\n14|c|OUT_OF_MEMORY\n15|d|CANCELLED+\n"
    )
    assert states.parse_state_table(text) == {
        "12": "COMPLETED",
        "13": "CANCELLED",
        "14": "OUT_OF_MEMORY",
        "15": "CANCELLED",
    }


def test_an_older_job_with_the_same_id_is_not_ours():
    # after a controller reset, job ids repeat and accounting still holds the old job 7
    text = "7|smk-old-1-aaaa|COMPLETED\n8|smk-b-2-ours|RUNNING\n"
    assert states.parse_state_table(text, {"7": "smk-a-1-ours", "8": "smk-b-2-ours"}) == {
        "8": "RUNNING"
    }


def _fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_without_accounting_states_come_from_squeue_then_result_files(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1\n")
    _fake_command(bin_dir, "squeue", "echo '1|j1|RUNNING'; echo '2|j2|PENDING'\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ok, error, none = (tmp_path / f"{i}_0_result.pkl" for i in (3, 4, 5))
    cloudpickle_dump(("success", None), ok)
    cloudpickle_dump(("error", "Traceback ...\nRuntimeError: the job command exited 1"), error)
    files = {str(i): tmp_path / f"{i}_0_result.pkl" for i in range(1, 6)}
    names = {str(i): f"j{i}" for i in range(1, 6)}

    assert states.slurm_states(names, files) == {
        "1": "RUNNING",
        "2": "PENDING",
        "3": "COMPLETED",
        "4": "FAILED",
        "5": states.VANISHED,  # left the queue, no result: killed
    }
    assert states.result_error_summary(error) == "RuntimeError: the job command exited 1"
    assert states.result_error_summary(none) is None


def test_preempted_job_that_slurm_did_not_requeue_is_final(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "sacct", "echo '1|a|PREEMPTED'; echo '2|b|PREEMPTED'\n")
    _fake_command(bin_dir, "squeue", "echo '1|a|PENDING'\n")  # 1 requeued, 2 gone
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert states.slurm_states({"1": "a", "2": "b"}, {}) == {
        "1": "PREEMPTED",  # still active
        "2": states.PREEMPTED_NOT_REQUEUED,
    }


def test_sacct_is_one_call_for_all_jobs(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _fake_command(
        bin_dir, "sacct", f'echo "$@" >> {calls}; echo "7|a|RUNNING"; echo "8|b|TIMEOUT"\n'
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    names = {"7": "a", "8": "b", "9": "c"}  # 9: submitted, not yet recorded
    assert states.slurm_states(names, {}) == {"7": "RUNNING", "8": "TIMEOUT"}
    (call,) = calls.read_text().splitlines()
    assert "--jobs=7,8,9" in call


# ---- Snakemake on the local backend -------------------------------------------------------


def _write_snakefile(workdir: Path, text: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(textwrap.dedent(text))


def _submissions(output: str) -> dict[str, tuple[str, Path]]:
    return {rule: (job_id, Path(log)) for rule, job_id, log in SUBMITTED.findall(output)}


def test_local_backend_runs_jobs_and_reports_a_failure_with_its_log(tmp_path):
    _write_snakefile(
        tmp_path,
        """
        rule all:
            input: "out/b.txt", "out/broken.txt"

        rule a:
            output: "out/a.txt"
            resources: runtime=2
            shell: "echo from-a > {output}; echo a-says-stdout; echo a-says-stderr >&2"

        rule b:
            input: "out/a.txt"
            output: "out/b.txt"
            shell: "tr a-z A-Z < {input} > {output}"

        rule broken:
            output: "out/broken.txt"
            shell: "echo about-to-fail >&2; exit 7"
        """,
    )
    run = subprocess.run(
        [*LOCAL_RUN, "--keep-going"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert (tmp_path / "out/b.txt").read_text() == "FROM-A\n"
    jobs = _submissions(output)
    a_log = jobs["a"][1].read_text()
    assert "a-says-stdout" in a_log and "a-says-stderr" in a_log

    broken_id, broken_log = jobs["broken"]
    assert f"local submitit job {broken_id} ended in state FAILED" in output
    assert f"Job log: {broken_log}" in output
    assert "about-to-fail" in broken_log.read_text()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_ctrl_c_cancels_running_local_jobs(tmp_path):
    _write_snakefile(
        tmp_path,
        """
        rule all:
            input: expand("out/{i}.txt", i=[1, 2])

        rule hold:
            output: "out/{i}.txt"
            shell: "echo $$ > pid-{wildcards.i}; exec sleep 300"
        """,
    )
    pid_files = [tmp_path / "pid-1", tmp_path / "pid-2"]
    with (tmp_path / "snakemake.log").open("w") as log:
        snakemake = subprocess.Popen(LOCAL_RUN, cwd=tmp_path, stdout=log, stderr=log)
        try:
            _wait_until(lambda: all(f.exists() for f in pid_files), 60, "both jobs to start")
            snakemake.send_signal(signal.SIGINT)
            snakemake.wait(timeout=60)
        finally:
            snakemake.kill()
    sleepers = [int(f.read_text()) for f in pid_files]
    _wait_until(lambda: not any(_alive(pid) for pid in sleepers), 20, "the jobs to be killed")
    assert not list((tmp_path / "out").glob("*.txt"))


# ---- the job command: requeue at the walltime, torch.distributed -------------------------


def _local_executor(folder: Path, timeout_s: float, signal_delay_s: int, **params):
    executor = submitit.LocalExecutor(folder, max_num_timeout=3)
    executor.update_parameters(
        timeout_min=timeout_s / 60, signal_delay_s=signal_delay_s, stderr_to_stdout=True, **params
    )
    return executor


def test_resumable_job_checkpoints_at_the_walltime_and_resumes(tmp_path):
    # 8 s walltime, signal 4 s before: the 6 steps of 1 s need a second run
    executor = _local_executor(tmp_path / "logs", timeout_s=8, signal_delay_s=4)
    command = f"{sys.executable} {COUNTER} out.txt ckpt/step.json 6"
    job = executor.submit(JobCommand(command, cwd=str(tmp_path), resumable=True))
    job.result()  # raises if the job failed
    log = job.paths.stdout.read_text()
    assert (tmp_path / "out.txt").read_text() == "6\n"
    assert "SIGUSR1: checkpointed at step" in log
    assert re.search(r"resuming from step [1-5]\b", log), log
    assert "Requeued job" in log


def test_job_that_is_not_resumable_runs_until_killed_at_the_walltime(tmp_path):
    executor = _local_executor(tmp_path / "logs", timeout_s=5, signal_delay_s=2)
    job = executor.submit(JobCommand("echo $$ > pid; exec sleep 60", cwd=str(tmp_path)))
    job.wait()
    assert job.exception() is not None  # no result: it was killed
    assert "this job is not resumable" in job.paths.stdout.read_text()
    _wait_until(lambda: not _alive(int((tmp_path / "pid").read_text())), 10, "the command to die")


DDP_SCRIPT = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
with open(f"rank{os.environ['RANK']}.txt", "w") as f:
    f.write(f"{os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']} {int(total.item())}")
dist.destroy_process_group()  # exiting with a live gloo group can abort the process
"""


def test_two_tasks_run_the_command_under_torch_distributed(tmp_path):
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    executor = _local_executor(tmp_path / "logs", timeout_s=120, signal_delay_s=10)
    executor.update_parameters(tasks_per_node=2)
    job = executor.submit(JobCommand(f"{sys.executable} ddp.py", cwd=str(tmp_path)))
    job.results()
    # world size 2, local rank = rank on one machine, all_reduce of 1 + 2
    assert (tmp_path / "rank0.txt").read_text() == "2 0 3"
    assert (tmp_path / "rank1.txt").read_text() == "2 1 3"


# ---- the experiment's resources reach sbatch -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
FAKE_SLURM = {  # sbatch accepts everything; no job is ever seen again (it ends as VANISHED)
    "sbatch": 'echo "Submitted batch job 4242"',
    "srun": "exit 0",
    "sacct": "exit 1",
    "squeue": "exit 0",
    "scancel": "exit 0",
}


def _train_sbatch_script(tmp_path: Path, spec: str) -> str:
    """The sbatch script of one train job of `spec` under `--profile slurm`: the workflow's
    own rules and profile, with SLURM's commands replaced by stand-ins that accept the job."""
    import yaml

    from diffobj import shared_paths
    from diffobj import spec as diffobj_spec

    for name in ("Snakefile", "workflow", "config", "slurm"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"stand-in, never read")
    loaded = diffobj_spec.load(tmp_path / spec)  # its dataset paths start at tmp_path
    run = loaded.runs[0]
    results = tmp_path / "results" / loaded.experiment
    # the train job's inputs exist, so that it is the one job submitted
    for file in shared_paths.DATA.files:
        path = shared_paths.data_file(loaded, run.dataset, file, tmp_path / "results")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (results / "runs" / run.id).mkdir(parents=True)
    (results / "runs" / run.id / "config.yaml").write_text(yaml.safe_dump(run.resolved()))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, body in FAKE_SLURM.items():
        (bin_dir / command).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / command).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfile", spec]
    argv += ["--seconds-between-status-checks", "1", "--retries", "0"]
    target = f"results/{loaded.experiment}/runs/{run.id}/model.pt"
    result = subprocess.run(
        [*argv, target], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    scripts = sorted((tmp_path / ".snakemake/submitit/rule_train").glob("*_submission.sh"))
    assert len(scripts) == 1, result.stdout + result.stderr
    return scripts[0].read_text()


def test_a_gpu_specs_sbatch_script_requests_its_gpus(tmp_path):
    import yaml

    spec = "config/experiments/cifar10_weighting_study.yaml"
    train = yaml.safe_load((ROOT / spec).read_text())["resources"]["train"]
    script = _train_sbatch_script(tmp_path, spec)
    assert f"#SBATCH --gpus-per-node={train['gpus']}\n" in script
    assert f"#SBATCH --cpus-per-task={train['threads']}\n" in script
    assert f"#SBATCH --mem={train['mem_mb']}M\n" in script
    assert f"#SBATCH --time={train['runtime']}\n" in script


def test_the_default_specs_sbatch_script_requests_no_gpu(tmp_path):
    script = _train_sbatch_script(tmp_path, "config/config.yaml")
    assert "--gpus-per-node" not in script and "--gres" not in script
    assert "#SBATCH --cpus-per-task=1\n" in script and "#SBATCH --mem=8000M\n" in script
