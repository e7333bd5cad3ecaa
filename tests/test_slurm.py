"""The submitit executor on a real SLURM cluster (scripts/slurm-cluster.sh start).

Skipped unless `sinfo` answers. With DIFFOBJ_SLURM_START=1 (and root) the tests start the
local cluster themselves and stop it afterwards. About 2.5 minutes: the walltime tests
wait for SLURM's one-minute minimum time limit. Nothing here needs GPUs: CI's cluster has
none (DIFFOBJ_SLURM_FAKE_GPUS=0), and the default experiment's resources ask for none.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
COUNTER = Path(__file__).with_name("checkpoint_counter.py")
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
SUBMITTED = re.compile(r"Job \d+ \((\w+)\) submitted as slurm job (\d+), log: (\S+)")
# The profile users run, with faster status checks and an early walltime signal: with
# runtime=1 the signal comes at 5 s (+ up to 30 s: SLURM checks time limits every 30 s).
PROFILE_RUN = [
    *(sys.executable, "-m", "snakemake", "--profile", str(REPO / "slurm")),
    *("--jobs", "10", "--retries", "0", "--latency-wait", "10"),
    *("--seconds-between-status-checks", "2", "--submitit-signal-delay-s", "55"),
]


def _sinfo_works() -> bool:
    try:
        run = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and bool(run.stdout.strip())


@pytest.fixture(scope="module")
def cluster():
    started = False
    if not _sinfo_works():
        if os.environ.get("DIFFOBJ_SLURM_START") != "1":
            pytest.skip("no SLURM cluster: run scripts/slurm-cluster.sh start (root)")
        subprocess.run([str(CLUSTER_SCRIPT), "start"], check=True, timeout=600)
        started = True
    yield
    if started:
        subprocess.run([str(CLUSTER_SCRIPT), "stop"], check=False, timeout=120)


def _sacct(job_id: str, duplicates: bool = False) -> list[str]:
    """The job's states, one per run (several when it was requeued)."""
    command = ["sacct", "--allocations", "--noheader", "--parsable2", "--format=State"]
    command += ["--duplicates"] if duplicates else []
    run = subprocess.run([*command, f"--jobs={job_id}"], capture_output=True, text=True)
    return [line.split()[0] for line in run.stdout.splitlines() if line.strip()]


def _submissions(output: str) -> dict[str, list[tuple[str, Path]]]:
    jobs: dict[str, list[tuple[str, Path]]] = {}
    for rule, job_id, log in SUBMITTED.findall(output):
        jobs.setdefault(rule, []).append((job_id, Path(log)))
    return jobs


WORKFLOW = f"""
rule all:
    input: "out/gathered.txt", "out/count.txt", "out/sleeper.txt", "out/broken.txt", "out/ddp.txt"

rule hello:
    output: "out/hello-{{i}}.txt"
    shell: "echo hello {{wildcards.i}} from $SLURM_JOB_ID > {{output}}"

rule gather:
    input: expand("out/hello-{{i}}.txt", i=[1, 2])
    output: "out/gathered.txt"
    shell: "cat {{input}} > {{output}}"

# needs 45 s, gets the walltime signal after 5..35 s: checkpoints, is requeued, resumes
rule count:
    output: "out/count.txt"
    resources: runtime=1, resumable=1
    shell: "{sys.executable} {COUNTER} {{output}} ckpt/count.json 45"

# not resumable: runs into its one-minute walltime
rule sleeper:
    output: "out/sleeper.txt"
    resources: runtime=1
    shell: "sleep 300; touch {{output}}"

rule broken:
    output: "out/broken.txt"
    shell: "echo broken-on-purpose >&2; exit 5"

# two tasks (as for two GPUs; CI's cluster has none), each runs the command under
# torch.distributed
rule ddp:
    output: "out/ddp.txt"
    resources: tasks_per_node=2
    shell: "{sys.executable} ddp.py {{output}}"
"""

# Rank 0 writes the rule's output, rank 1 a side file: "world_size local_rank all_reduce(1+2)".
DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
path = sys.argv[1] if dist.get_rank() == 0 else "out/ddp-rank1.txt"
with open(path, "w") as f:
    f.write(f"{os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']} {int(total.item())}")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def workflow(cluster, tmp_path_factory):
    """One `snakemake --profile slurm` run of a workflow with every kind of job."""
    workdir = tmp_path_factory.mktemp("slurm-workflow")
    (workdir / "Snakefile").write_text(WORKFLOW)
    (workdir / "ddp.py").write_text(DDP_SCRIPT)
    run = subprocess.run(PROFILE_RUN, cwd=workdir, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    return run.returncode, output, workdir, _submissions(output)


def test_profile_runs_jobs_that_complete_in_sacct(workflow):
    returncode, output, workdir, jobs = workflow
    assert returncode != 0  # sleeper and broken fail on purpose; keep-going runs the rest
    assert (workdir / "out/gathered.txt").read_text().count("hello") == 2
    finished = jobs["hello"] + jobs["gather"]
    assert len(finished) == 3, output
    for job_id, _ in finished:
        assert _sacct(job_id) == ["COMPLETED"]


def test_resumable_job_is_requeued_at_the_walltime_and_resumes(workflow):
    _, output, workdir, jobs = workflow
    ((job_id, log),) = jobs["count"]
    assert (workdir / "out/count.txt").read_text() == "45\n", output
    text = log.read_text()
    assert "SIGUSR1: checkpointed at step" in text
    assert re.search(r"resuming from step [1-9]", text), text
    runs = _sacct(job_id, duplicates=True)
    assert runs[-1] == "COMPLETED" and "REQUEUED" in runs[:-1], runs


def test_job_that_is_not_resumable_fails_as_timeout(workflow):
    _, output, _, jobs = workflow
    ((job_id, log),) = jobs["sleeper"]
    assert f"SLURM job {job_id} ended in state TIMEOUT" in output
    assert "not resumable" in output and f"Job log: {log}" in output
    assert "this job is not resumable" in log.read_text()
    assert _sacct(job_id) == ["TIMEOUT"]


def test_failing_job_reports_its_state_and_log(workflow):
    _, output, _, jobs = workflow
    ((job_id, log),) = jobs["broken"]
    assert f"SLURM job {job_id} ended in state FAILED" in output
    assert f"Job log: {log}" in output
    assert "broken-on-purpose" in log.read_text()
    assert _sacct(job_id) == ["FAILED"]


def test_job_with_two_tasks_runs_two_ranks_of_torch_distributed(workflow):
    _, output, workdir, jobs = workflow
    ((job_id, log),) = jobs["ddp"]
    assert (workdir / "out/ddp.txt").read_text() == "2 0 3", output
    assert (workdir / "out/ddp-rank1.txt").read_text() == "2 1 3"
    assert "rank 1/2" in log.with_name(f"{job_id}_1_log.out").read_text()  # task 1's log
    assert _sacct(job_id) == ["COMPLETED"]


def _queued(job_ids: list[str]) -> list[str]:
    run = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%T", f"--jobs={','.join(job_ids)}"],
        capture_output=True,
        text=True,
    )
    return [line for line in run.stdout.splitlines() if line.strip()]


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_ctrl_c_cancels_running_and_queued_jobs(cluster, tmp_path):
    # each job asks for 60% of the node's memory: one runs, the others wait in the queue
    node_mb = int(
        subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True).stdout.split()[0]
    )
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule all:
                input: expand("out/{{i}}.txt", i=range(3))

            rule hold:
                output: "out/{{i}}.txt"
                resources: mem_mb={int(node_mb * 0.6)}
                shell: "sleep 300; touch {{output}}"
            """
        )
    )
    log = tmp_path / "snakemake.log"
    with log.open("w") as sink:
        snakemake = subprocess.Popen(PROFILE_RUN, cwd=tmp_path, stdout=sink, stderr=sink)
        try:
            _wait_until(
                lambda: len(_submissions(log.read_text()).get("hold", [])) == 3, 60, "3 jobs"
            )
            job_ids = [job_id for job_id, _ in _submissions(log.read_text())["hold"]]
            _wait_until(lambda: any("PENDING" in j for j in _queued(job_ids)), 30, "a queued job")
            _wait_until(lambda: any("RUNNING" in j for j in _queued(job_ids)), 30, "a running job")
            snakemake.send_signal(signal.SIGINT)
            snakemake.wait(timeout=60)
        finally:
            snakemake.kill()
    _wait_until(lambda: not _queued(job_ids), 30, "squeue to be empty")
    assert all(_sacct(job_id) == ["CANCELLED"] for job_id in job_ids)


# The default experiment's resources (no `resources:` key: CPU-sized) on the reduced grid of
# the workflow tests: one Gaussian run, no optimal loss, no classifier FD, one figure.
def _reduced_default() -> dict:
    from test_workflow import TINY

    spec = {k: v for k, v in TINY.items() if k != "grid"}
    spec["grid"] = [{**TINY["grid"][0], "weighting": ["elbo"]}]
    spec["optimal_loss"] = {"enabled": False}
    spec["evaluation"] = {"fd_classifier": False, "nll": True}
    spec["figures"] = ["weightings"]
    return spec


def test_default_experiment_runs_through_the_profile_on_a_cluster_without_gpus(cluster, tmp_path):
    import yaml

    assert "resources" not in yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name in ("Snakefile", "workflow", "config"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_reduced_default()))
    run = subprocess.run(
        [*PROFILE_RUN, "--configfile", "spec.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    jobs = _submissions(output)
    assert {"prepare_data", "train", "nll", "tables", "weightings"} <= set(jobs), output
    for rule, submitted in jobs.items():
        for job_id, log in submitted:
            assert _sacct(job_id) == ["COMPLETED"], (rule, log.read_text()[-2000:])
            script = next(log.parent.glob(f"{job_id}_submission.sh")).read_text()
            assert "--gpus-per-node" not in script and "--gres" not in script
    tables = tmp_path / "results" / "tiny" / "tables"
    assert {p.name for p in tables.glob("*.parquet")} >= {"runs.parquet", "evaluation.parquet"}
