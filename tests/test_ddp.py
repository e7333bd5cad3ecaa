"""DDP does not change the experiment: the per-sample draws of a step are those of a 1-process
run (each rank its rows of them), 2 gloo processes train the weights 1 process trains, and a
SIGTERM'd run resumes bit-exactly, in the same or another number of processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_train import ROOT, _train_command, _weights, quiet, run_config

from diffobj.io import read_csv
from diffobj.objectives import schedules
from diffobj.processes import gaussian, masked
from diffobj.seeds import Shard
from diffobj.training import augment
from diffobj.training.checkpoint import (
    CHECKPOINT_NAME,
    EXIT_TERMINATED,
    SIGNAL_POLL_STEPS,
    load_checkpoint,
)
from diffobj.training.train import train

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

BATCH, WORLD = 8, 2


def shards(seed: int) -> list[Shard]:
    """Each rank's rows of a batch, every rank's generator seeded alike (as train_step does)."""
    share = BATCH // WORLD
    return [
        Shard(torch.Generator().manual_seed(seed), r * share, share, BATCH) for r in range(WORLD)
    ]


def gaussian_draws(draws, x, schedule, weighting) -> tuple[torch.Tensor, torch.Tensor]:
    """The noised input and log-SNRs weighted_loss draws for x."""
    seen = []

    def eps_fn(z, level):
        seen.append(z)
        return torch.zeros_like(z)

    terms = gaussian.weighted_loss(eps_fn, x, schedule, weighting, draws)
    return seen[0], terms.log_snr


def test_the_ranks_rows_of_a_step_are_the_one_process_draws_and_differ(
    schedule_library, weighting_library
):
    vp = schedules.build("vp_cosine", schedule_library["vp_cosine"], (-10.0, 10.0))
    args = (vp, weighting_library["elbo"])
    x = torch.linspace(-1, 1, BATCH * 12).reshape(BATCH, 3, 2, 2)
    z, lam = gaussian_draws(torch.Generator().manual_seed(7), x, *args)
    parts = [gaussian_draws(s, x[s.start : s.start + s.size], *args) for s in shards(7)]
    assert torch.equal(torch.cat([p[0] for p in parts]), z)
    assert torch.equal(torch.cat([p[1] for p in parts]), lam)
    assert not torch.equal(parts[0][0] - x[:4], parts[1][0] - x[4:])  # different noise per rank

    tokens = torch.randint(256, (BATCH, 1, 3, 3))
    md4 = schedules.build("md4_cosine", schedule_library["md4_cosine"], (-9.0, 9.0))
    level = gaussian.sample_levels(md4, BATCH)[0]
    whole = masked.corrupt(tokens, level, torch.Generator().manual_seed(3))
    rows = [
        masked.corrupt(tokens[s.start : s.start + s.size], _rows(level, s), s) for s in shards(3)
    ]
    assert torch.equal(torch.cat(rows), whole)

    pipe = augment.AugmentPipe(p=1.0)
    whole = pipe.draw(BATCH, torch.Generator().manual_seed(5), torch.device("cpu")).labels()
    rows = [pipe.draw(s.size, s, torch.device("cpu")).labels() for s in shards(5)]
    assert torch.equal(torch.cat(rows), whole)


def _rows(level: schedules.Level, shard: Shard) -> schedules.Level:
    return schedules.Level(*(shard.rows(v) for v in level.__dict__.values()))


# -- processes ------------------------------------------------------------------------------------


def launch(cfg: Path, out: Path, world: int) -> list[subprocess.Popen]:
    """`diffobj train` as torchrun starts it: ``world`` gloo processes (1: a plain process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = _train_command(cfg, out)
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    return procs


def finish(procs: list[subprocess.Popen], codes: int = 0) -> str:
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [codes] * len(procs), errors
    return errors[0]


def losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in read_csv(run / "train_log.csv")]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# float32 weights after a few AdamW steps; the two runs differ only in the order of the
# gradient sums (each rank's half, then gloo's all-reduce), a few float32 ulps per step
WEIGHT_ATOL = 1e-6


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    """The same global batch 8 in 1 process and in 2 x 4: equal losses (rel 1e-6) and EMA
    weights (abs 1e-6); they differed by 4.8e-3 after 4 steps when the noise seed had the rank."""
    cfg = run_config(tmp_path, steps=4, log_every=2, model={"dropout": 0.0})
    finish(launch(cfg, tmp_path / "ddp", WORLD))
    train(cfg, tmp_path / "one", quiet())
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)
    assert max_difference(tmp_path / "ddp", tmp_path / "one") <= WEIGHT_ATOL


def _steps(cfg: Path, steps: int) -> None:
    raw = yaml.safe_load(cfg.read_text())
    raw["training"]["steps"] = steps
    cfg.write_text(yaml.safe_dump(raw))


def test_sigterm_then_resume_is_bit_exact_and_resumes_in_another_world_size(tmp_path, capsys):
    cfg = run_config(
        tmp_path, steps=100_000, checkpoint_every=100_000, log_every=5, model={"dropout": 0.0}
    )
    cut = tmp_path / "cut"
    procs = launch(cfg, cut, WORLD)
    for line in procs[0].stderr:  # the handlers are installed before the announcement
        if "from scratch" in line:
            break
    time.sleep(1.0)
    for p in procs:  # as torchrun forwards SLURM's SIGTERM to every rank
        p.send_signal(signal.SIGTERM)
    finish(procs, EXIT_TERMINATED)
    step = load_checkpoint(cut / "checkpoints" / CHECKPOINT_NAME)["step"]
    assert step > 0 and step % SIGNAL_POLL_STEPS == 0  # the ranks agree at a poll step
    total = step + 7  # past the next log step, so a log window spans the interruption
    _steps(cfg, total)
    other = tmp_path / "other"  # the same checkpoint, resumed in 1 process
    other.mkdir()
    (other / "checkpoints").mkdir()
    ckpt = (cut / "checkpoints" / CHECKPOINT_NAME).read_bytes()
    (other / "checkpoints" / CHECKPOINT_NAME).write_bytes(ckpt)
    finish(launch(cfg, cut, WORLD))
    finish(launch(cfg, tmp_path / "straight", WORLD))
    assert max_difference(cut, tmp_path / "straight") == 0.0
    assert losses(cut) == losses(tmp_path / "straight")
    train(cfg, other, quiet())  # in this process: 1 process, no DDP
    assert f"resuming a {WORLD}-process checkpoint in 1 process(es)" in capsys.readouterr().err
    assert losses(other) == pytest.approx(losses(cut), rel=1e-6)
    assert max_difference(other, cut) <= WEIGHT_ATOL
