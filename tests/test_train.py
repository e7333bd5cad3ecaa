"""Training: outputs and logs, closed-form losses, exact resume, signal-safe checkpoints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from default_grid import default_run

from diffobj import spec
from diffobj.devices import Dist, distributed_env
from diffobj.errors import UserError
from diffobj.io import read_csv
from diffobj.objectives.densities import AdaptiveCorrected, bin_edges
from diffobj.run_config import RunConfig
from diffobj.runs import load_run
from diffobj.training.checkpoint import (
    CHECKPOINT_NAME,
    EXIT_PREEMPTED,
    EXIT_TERMINATED,
    load_checkpoint,
)
from diffobj.training.state import Ema
from diffobj.training.train import TrainOptions, train
from diffobj.training.train_data import DataOrder

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = {"gaussian": "vp_cosine", "masked": "md4_cosine"}


FAST = {
    "steps": 6,
    "batch_size": 8,
    "lr": 2e-3,
    "warmup_steps": 2,
    "ema_halflife_images": 100,
    "checkpoint_every": 100,
    "log_every": 3,
    "log_snr_bins": 16,
}


def digits(n: int) -> np.ndarray:
    """The first n sklearn digits as uint8 (n, 8, 8, 1), 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    return np.round(load_digits().images[:n] * 255 / 16).astype(np.uint8)[..., None]


def run_config(
    tmp_path: Path,
    kind: str = "gaussian",
    weighting: str = "elbo",
    images: int = 32,
    model: dict | None = None,
    **training,
) -> Path:
    """A real run config of the embedded default (config/config.yaml) on a few digits."""
    run_id = f"digits-{kind}-{SCHEDULE[kind]}-{weighting}-mlp-s0"
    raw = default_run(run_id).resolved()
    data = tmp_path / "data" / "images.npy"
    data.parent.mkdir(parents=True, exist_ok=True)
    np.save(data, digits(images))
    raw["data"]["images"] = str(data)
    raw["model"].update({"channels": 8, **(model or {})})
    raw["training"].update({**FAST, **training})
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def quiet(**kw) -> TrainOptions:
    return TrainOptions(device="cpu", progress=False, eval_images=16, **kw)


# -- outputs ------------------------------------------------------------------------------------------


def test_training_writes_outputs_and_binned_logs(tmp_path):
    cfg = run_config(tmp_path)
    out = tmp_path / "run"
    train(cfg, out, quiet())
    assert (out / "config.yaml").read_text() == cfg.read_text()
    log = read_csv(out / "train_log.csv")
    assert [int(r["step"]) for r in log] == [3, 6]
    assert [int(r["images_seen"]) for r in log] == [24, 48]
    assert float(log[0]["lr"]) == pytest.approx(2e-3)  # warmup of 2 steps is over by step 3
    assert [k for k in log[0] if k.startswith("error_bin_")] == [
        f"error_bin_{k:02d}" for k in range(16)
    ]
    # the long table holds the same numbers as the wide one
    long = read_csv(out / "train_bins.csv")
    for r in long:
        wide = next(row for row in log if row["step"] == r["step"])
        assert float(wide[f"error_bin_{int(r['bin']):02d}"]) == pytest.approx(float(r["error"]))
    assert sum(int(r["count"]) for r in long) == 48  # every training sample lands in one bin
    # the fixed bins: 16 equal bins over the process's log_snr_range [-10, 10]
    evals = read_csv(out / "eval_bins.csv")
    centres = [float(r["log_snr"]) for r in evals]
    assert centres == pytest.approx(list(np.linspace(LO, HI, 17)[:-1] + (HI - LO) / 32))
    assert all(int(r["n"]) == 16 for r in evals)
    # once model.pt is written the checkpoint goes: the downstream rules read the model
    assert not (out / "checkpoints").exists()
    assert load_run(out, "cpu").step == 6


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_eval_error_of_an_untrained_model_has_its_closed_form(tmp_path, kind):
    """With lr ~ 0 the network stays at its neutral start: eps_hat = 0, so the eps-MSE is
    E||eps||^2 / D = 1; uniform logits, so the masked CE per dimension is (1 - alpha) log 256.
    (The U-Net: both its heads start neutral; the masked MLP's readout does not, by design.)"""
    out = tmp_path / "run"
    unet = {"preset": "diffobj_unet", "channel_mult": [1, 2], "attention_resolutions": []}
    train(
        run_config(tmp_path, kind, lr=1e-12, steps=1, model=unet),
        out,
        TrainOptions(device="cpu", progress=False, eval_images=32),
    )
    for r in read_csv(out / "eval_bins.csv"):
        lam, error, n = float(r["log_snr"]), float(r["error"]), int(r["n"])
        alpha = 1 / (1 + math.exp(-lam))
        if kind == "gaussian":  # ||eps||^2 / D: mean 1, variance 2 / D
            expected, sd = 1.0, math.sqrt(2 / 64 / n)
        else:  # log 256 times the masked fraction: mean 1 - alpha, variance alpha (1 - alpha) / D
            expected, sd = (
                (1 - alpha) * math.log(256),
                math.log(256) * math.sqrt(alpha * (1 - alpha) / 64 / n),
            )
        assert abs(error - expected) < 5 * sd + 1e-6


def test_a_tiny_model_overfits_a_handful_of_images(tmp_path):
    """After 150 steps on 4 digits the model beats, by a wide margin, the best denoiser that
    does not look at which image it sees (x0_hat = the data mean, whose eps-MSE per dimension
    is e^lam tr(Cov x) / D) where noise hides the images but not entirely (-1 < lam < 4)."""
    cfg = run_config(
        tmp_path,
        weighting="iddpm",
        images=4,
        model={"channels": 16},
        steps=150,
        batch_size=16,
        warmup_steps=10,
        ema_halflife_images=200,
        log_every=50,
    )
    out = tmp_path / "run"
    train(cfg, out, quiet())
    x = digits(4).reshape(4, -1) / 127.5 - 1
    per_dim_var = x.var(0).mean()
    middle = [r for r in read_csv(out / "eval_bins.csv") if -1 < float(r["log_snr"]) < 4]
    assert len(middle) == 4
    for r in middle:
        mean_predictor = math.exp(float(r["log_snr"])) * per_dim_var
        assert float(r["error"]) < 0.5 * mean_predictor
    log = read_csv(out / "train_log.csv")
    assert float(log[-1]["loss"]) < 0.5 * float(log[0]["loss"])


# -- resume and signals ---------------------------------------------------------------------------------


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["ema"]


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_resume_equals_uninterrupted(tmp_path, kind):
    cfg = run_config(
        tmp_path, kind, model={"dropout": 0.1}, steps=8, log_every=2, checkpoint_every=4
    )
    train(cfg, tmp_path / "straight", quiet())
    # 3 steps, then "killed" (its last checkpoint is at step 3), then the same command again
    train(cfg, tmp_path / "resumed", quiet(stop_after=3))
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / CHECKPOINT_NAME)["step"] == 3
    train(cfg, tmp_path / "resumed", quiet())
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    strip = ("images_per_s", "peak_mem_mb")
    logs = [
        [{k: v for k, v in r.items() if k not in strip} for r in read_csv(d / "train_log.csv")]
        for d in (tmp_path / "straight", tmp_path / "resumed")
    ]
    assert logs[0] == logs[1]


def test_a_kept_checkpoint_lets_more_steps_continue_a_finished_run(tmp_path):
    cfg = run_config(tmp_path, steps=4, keep_checkpoint=True)
    checkpoint = tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME
    train(cfg, tmp_path / "run", quiet())
    assert load_checkpoint(checkpoint)["step"] == 4
    raw = yaml.safe_load(cfg.read_text())
    # neither key changes the experiment, so the checkpoint still resumes
    raw["training"].update(steps=6, keep_checkpoint=False)
    cfg.write_text(yaml.safe_dump(raw))
    train(cfg, tmp_path / "run", quiet())
    assert [int(r["step"]) for r in read_csv(tmp_path / "run" / "train_log.csv")] == [3, 4, 6]
    assert not checkpoint.parent.exists()


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    cfg = run_config(tmp_path, steps=2, keep_checkpoint=True)
    train(cfg, tmp_path / "run", quiet())
    raw = yaml.safe_load(cfg.read_text())
    raw["training"]["lr"] = 1e-4
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="checkpoint of a different run config"):
        train(cfg, tmp_path / "run", quiet())


def test_checkpoint_dir_can_live_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFOBJ_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    cfg = run_config(tmp_path, steps=2, keep_checkpoint=True)
    train(cfg, tmp_path / "run", quiet())
    run_id = yaml.safe_load(cfg.read_text())["run_id"]
    assert (tmp_path / "ckpt" / run_id / CHECKPOINT_NAME).is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()
    train(cfg, tmp_path / "run2", quiet(checkpoint_dir=tmp_path / "mine"))
    assert (tmp_path / "mine" / CHECKPOINT_NAME).is_file()


def _train_command(cfg: Path, out: Path) -> list[str]:
    """`diffobj train` on the CPU with a small final evaluation, as a subprocess argv."""
    return [
        sys.executable,
        "-m",
        "diffobj.cli",
        "train",
        "--run-config",
        str(cfg),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--eval-images",
        "8",
    ]


def _start(cfg: Path, out: Path) -> subprocess.Popen:
    cmd = [*_train_command(cfg, out), "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # the announcement comes after the signal handlers are installed
    for line in proc.stderr:
        if "from scratch" in line or "resuming" in line:
            return proc
    raise AssertionError(f"training did not start (exit code {proc.wait()})")


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGUSR1, EXIT_PREEMPTED), (signal.SIGINT, 130)],
)
def test_signal_checkpoints_then_exits_and_rerun_resumes(tmp_path, signum, code):
    cfg = run_config(tmp_path, steps=100_000, checkpoint_every=100_000, log_every=1000)
    out = tmp_path / "run"
    proc = _start(cfg, out)
    time.sleep(0.5)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    assert "rerun the same command to resume" in proc.stderr.read()
    ckpt_dir = out / "checkpoints"
    assert [p.name for p in ckpt_dir.iterdir()] == [CHECKPOINT_NAME]  # no temporary files left
    step = load_checkpoint(ckpt_dir / CHECKPOINT_NAME)["step"]
    assert step >= 1
    assert not (out / "model.pt").exists()  # outputs only when training is done
    raw = yaml.safe_load(cfg.read_text())
    raw["training"]["steps"] = step + 2
    cfg.write_text(yaml.safe_dump(raw))
    result = train(cfg, out, quiet())
    assert result.step == step + 2 and (out / "model.pt").is_file()
    assert not ckpt_dir.exists()  # finished now: the checkpoint has done its job


def test_a_checkpoint_is_never_half_written(tmp_path):
    """SIGKILL (no handler can run) while a checkpoint is written every step: the checkpoint
    on disk is always a whole one, and the run resumes from it."""
    cfg = run_config(tmp_path, steps=100_000, checkpoint_every=1, log_every=1000)
    out = tmp_path / "run"
    proc = _start(cfg, out)
    deadline = time.time() + 30
    while not (out / "checkpoints" / CHECKPOINT_NAME).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # dozens of checkpoints later, most likely in the middle of writing one
    proc.kill()
    proc.wait(timeout=30)
    proc.stderr.close()
    state = load_checkpoint(out / "checkpoints" / CHECKPOINT_NAME)
    assert state["step"] >= 1 and set(state["model"]) == set(state["ema"])
    raw = yaml.safe_load(cfg.read_text())
    raw["training"].update(steps=state["step"] + 1)
    cfg.write_text(yaml.safe_dump(raw))
    assert train(cfg, out, quiet()).step == state["step"] + 1


# -- adaptive noise density -------------------------------------------------------------------------------


def _adaptive(kind: str, weighting_name: str, running_error: torch.Tensor) -> AdaptiveCorrected:
    raw = yaml.safe_load(run_config_text(kind, weighting_name))
    config = RunConfig(raw["run_id"], raw)
    edges = bin_edges(tuple(config.process["log_snr_range"]), 16)
    density = AdaptiveCorrected(
        kind,
        config.schedule,
        config.weighting,
        edges,
        (np.array([-20.0, 20.0]), np.array([0.0, 0.0])),
    )
    density.running_gap = running_error.double()
    density.refresh_schedule()
    return density


def run_config_text(kind: str, weighting: str) -> str:
    run_id = f"digits-{kind}-{SCHEDULE[kind]}-{weighting}-mlp-s0"
    return yaml.safe_dump(default_run(run_id).resolved())


def sigmoid(x: torch.Tensor | float) -> torch.Tensor:
    return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64))


# the default's Gaussian log-SNR range, which the run configs below use
LO, HI = (
    spec.load(ROOT / "config" / "config.yaml", root=ROOT).spec.processes["gaussian"].log_snr_range
)


@pytest.mark.parametrize(
    ("kind", "weighting", "lam_weight", "expected"),
    [
        # Gaussian, eps_hat = 0: error = ||eps||^2 / D, mean 1; L = 1/2 ∫ w(lam) dlam
        ("gaussian", "elbo", lambda lam: torch.ones_like(lam), 0.5 * (HI - LO)),
        (
            "gaussian",
            "sigmoid",
            lambda lam: sigmoid(-lam),
            # ∫ sigmoid(-lam) dlam = softplus(-lam_min) - softplus(-lam_max)
            0.5 * (math.log1p(math.exp(-LO)) - math.log1p(math.exp(-HI))),
        ),
        # masked, uniform logits: CE = (1 - alpha) log 256; L = ∫ sigmoid(l) sigmoid(-l) log 256 dl
        ("masked", "elbo", sigmoid, math.log(256) * float(sigmoid(9.21) - sigmoid(-9.21))),
    ],
)
def test_adaptive_density_keeps_the_objective(kind, weighting, lam_weight, expected):
    """Whatever p(lam) the gap makes, importance weights W / p keep E[loss] = L_w, and the
    draws follow p(lam) ∝ W(lam) gap(lam)."""
    density = _adaptive(kind, weighting, torch.linspace(0.01, 1.0, 16) ** 2)  # non-uniform gap
    n = 20_000
    x = torch.zeros(n, 1, 2, 2, dtype=torch.float32 if kind == "gaussian" else torch.long)

    def model_fn(z, level):
        return torch.zeros_like(z) if kind == "gaussian" else torch.zeros(len(z), 256, *z.shape[1:])

    terms = density.loss(model_fn, x, torch.Generator().manual_seed(0))
    sem = float(terms.loss.std()) / math.sqrt(n)
    assert abs(float(terms.loss.mean()) - expected) < 5 * sem
    # bin probabilities: gap_k ∫_bin W(lam) dlam, normalised (midpoint rule, 1000 points a bin)
    edges = density.edges
    fine = torch.linspace(0, 1, 1001, dtype=torch.float64)[:-1] + 0.0005
    mass = torch.stack(
        [
            lam_weight(lo + (hi - lo) * fine).mean()
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
    )
    p = mass * density.gap()
    p = p / p.sum()
    counts = torch.bincount(torch.bucketize(terms.log_snr, edges[1:-1]), minlength=16).double()
    assert ((counts - n * p).abs() < 5 * (n * p).sqrt() + 3).all()


def test_adaptive_training_runs_with_an_optimal_loss_table(tmp_path):
    table = tmp_path / "optimal.csv"
    lam = np.linspace(-20, 20, 9)  # beyond the range: J* = 0.01 at every drawn lam
    table.write_text("log_snr,optimal_loss\n" + "".join(f"{v},{0.01}\n" for v in lam))
    cfg = run_config(tmp_path, adaptive=True, steps=6, keep_checkpoint=True)  # read below
    with pytest.raises(UserError, match="needs --optimal-loss"):
        train(cfg, tmp_path / "run", quiet())
    assert not (tmp_path / "run").exists()
    result = train(cfg, tmp_path / "run", quiet(optimal_loss=table, adaptive_refresh=2))
    assert result.step == 6
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME)
    # the refresh windows' draws (6 steps x 8) are pooled and checkpointed; no bin has
    # MIN_DRAWS of them yet, so the gap is still unknown and lam comes from the schedule
    assert state["adaptive"]["pending_count"].sum() == 6 * 8
    assert state["adaptive"]["running_gap"].isnan().all()
    # what is pooled is each draw's error minus J*(its lam) (0.01 here), not the raw error
    errors = sum(r["error"] * r["count"] for r in state["bin_rows"])
    assert math.isclose(float(state["adaptive"]["pending_sum"].sum()), errors - 0.01 * 48)


def test_ddp_with_two_cpu_processes(tmp_path):
    """torchrun-style launch (gloo): the batch is split across 2 ranks, rank 0 writes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = run_config(tmp_path, steps=4, log_every=2)
    out = tmp_path / "run"
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        cmd = _train_command(cfg, out)
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert "world size 2" in errors[0]
    log = read_csv(out / "train_log.csv")
    assert [int(r["images_seen"]) for r in log] == [16, 32]  # global batch 8 = 2 ranks x 4
    assert (
        sum(int(r["count"]) for r in read_csv(out / "train_bins.csv")) == 32
    )  # both ranks' errors
    assert (out / "model.pt").is_file()


# -- pieces ------------------------------------------------------------------------------------------------


def test_data_order_visits_every_image_once_per_epoch_and_splits_across_ranks():
    order = DataOrder(10, seed=0)
    epoch = torch.cat([order.indices(step, 5, Dist()) for step in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))
    whole = order.indices(3, 6, Dist())  # crosses from epoch 1 into epoch 2
    parts = [order.indices(3, 6, Dist(rank=r, world=2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_ema_halflife_is_counted_in_images():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = Ema(net, halflife_images=1000)
    torch.nn.init.ones_(net.weight)
    for _ in range(1000 // 50):  # 1000 images in batches of 50, past the EMA's ramp-up
        ema.update(images_seen=10**9, batch=50)
    assert float(ema.net.weight) == pytest.approx(0.5)


def test_distributed_env_from_torchrun_or_slurm(monkeypatch):
    for var in (
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "MASTER_ADDR",
    ):
        monkeypatch.delenv(var, raising=False)
    assert distributed_env() == Dist(0, 1, 0)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed_env() == Dist(0, 1, 0)  # no MASTER_ADDR: not launched for DDP
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert distributed_env() == Dist(3, 4, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_env() == Dist(1, 2, 1)


def test_load_run(tmp_path):
    with pytest.raises(UserError, match=f"run directory {tmp_path} has no model.pt"):
        load_run(tmp_path, "cpu")
    train(run_config(tmp_path, steps=1), tmp_path / "run", quiet())
    run = load_run(tmp_path / "run", "cpu")
    assert run.kind == "gaussian" and run.image_shape == (1, 8, 8) and run.step == 1
    level = run.schedule.level(torch.full((3,), 0.5, dtype=torch.float64))
    assert run.denoiser(torch.randn(3, 1, 8, 8), level).shape == (3, 1, 8, 8)


# -- bad input -----------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "diffobj.cli",
            "train",
            *args,
            "--device",
            "cpu",
            "--no-progress",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_a_model_that_does_not_fit_the_data_writes_nothing(tmp_path):
    unet = {"preset": "diffobj_unet", "channel_mult": [1, 2], "attention_resolutions": [2]}
    cfg = run_config(tmp_path, model=unet)
    proc = _cli("--run-config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "attention_resolutions has 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_is_a_user_error(tmp_path):
    cfg = run_config(tmp_path)
    os.remove(tmp_path / "data" / "images.npy")
    with pytest.raises(UserError, match="image file not found"):
        train(cfg, tmp_path / "run", quiet())
    assert not (tmp_path / "run").exists()


def test_the_allocator_is_told_to_keep_freed_memory_where_it_is_glibc():
    import platform

    from diffobj.allocator import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory()  # both thresholds accepted (mallopt returns 1)
