"""A rule's log keeps every attempt and every DDP rank's output.

Snakemake deletes a job's log whenever it starts the job (each retry, each requeue, each DDP
task running the job command), so the rules append to per-rank files (LOG.rank0, ...) that
Snakemake does not manage, with LOG a link to rank 0's (workflow/rules/common.smk).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def snippet(name: str) -> str:
    """The string constant ``name`` of common.smk (a literal, read without running the file)."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    match = re.search(rf"^{name} = (.+)$", text, re.MULTILINE)
    assert match, f"common.smk defines no {name}"
    return ast.literal_eval(match.group(1))


def test_every_rule_logs_through_the_rank_files():
    for path in RULES:
        text = path.read_text()
        assert "> {log}" not in text, f"{path.name} writes its log directly"
        shells = text.count("shell:")
        assert text.count("LOG_LINK + ") == shells == text.count('" + LOG'), path.name


SNAKEFILE = """
LOG_LINK = {link!r}
LOG = {log!r}

rule flaky:
    output: "out.txt"
    log: "logs/flaky.log"
    resources: n=lambda wildcards, attempt: attempt
    shell: LOG_LINK + "(echo attempt {{resources.n}}; test {{resources.n}} -gt 1; touch {{output}})" + LOG
"""


def test_a_retried_job_keeps_the_first_attempts_output(tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE.format(link=snippet("LOG_LINK"), log=snippet("LOG")))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-c1", "--retries", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "logs" / "flaky.log"
    assert log.read_text().split() == ["attempt", "1", "attempt", "2"]
    assert log.resolve() == (tmp_path / "logs" / "flaky.log.rank0").resolve()


def test_ddp_ranks_write_their_own_files_and_a_late_start_loses_nothing(tmp_path):
    """Rank 0 writes before and after rank 1's job start deletes LOG (as Snakemake does)."""
    log = tmp_path / "logs" / "train.log"
    log.parent.mkdir()

    def task(rank: int, command: str) -> subprocess.Popen:
        shell = (snippet("LOG_LINK") + command + snippet("LOG")).replace("{{", "{")
        shell = shell.replace("}}", "}").replace("{log}", str(log))
        env = {**os.environ, "RANK": str(rank)}
        return subprocess.Popen(["bash", "-c", shell], env=env)

    rank0 = task(0, "(echo rank0 starts; sleep 1; echo rank0 ends)")
    while not log.is_file() or not log.read_text():
        time.sleep(0.05)
    log.unlink()  # rank 1's Snakemake preparing the job
    rank1 = task(1, "echo rank1")
    assert rank0.wait(30) == 0 and rank1.wait(30) == 0
    assert log.read_text().splitlines() == ["rank0 starts", "rank0 ends"]
    assert (tmp_path / "logs" / "train.log.rank1").read_text() == "rank1\n"
