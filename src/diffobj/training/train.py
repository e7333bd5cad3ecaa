"""Training one run: fast on a GPU, resumable to the bit on a CPU, signal safe.

``train(run_config, out_dir)`` trains the run's network with AdamW (fused kernels on CPU and CUDA), linear
learning-rate warmup, gradient clipping and an EMA whose half-life is counted in images (EDM);
on a GPU with bf16 autocast and channels_last (precision from the run config), optionally
torch.compile'd. Every random draw is a function of (seed, rank, step): the data order is a
seeded permutation per epoch and each step reseeds the noise generator, so a resumed run
draws exactly what an uninterrupted run draws.

Outputs in RUN_DIR (written at the end, atomically; bad input writes nothing):
  config.yaml     the run config
  model.pt        the final EMA network (``diffobj.runs.load_run`` reads it)
  train_log.csv   step, images_seen, loss, grad_norm, lr, images_per_s, peak_mem_mb,
                  error_bin_00 .. error_bin_K-1 (mean unweighted training error per log-SNR bin)
  train_bins.csv  the same binned errors in long form: step, bin, log_snr, error, count
  eval_bins.csv   the EMA model's unweighted error at the bin centres on the training data:
                  log_snr, error, stderr, n (Gaussian eps-MSE per dim, masked CE nats per dim)
train_log.csv (and tensorboard/, its TensorBoard event stream) also grow while the run trains.
The bins are ``log_snr_bins`` equal bins over the process's log_snr_range: the same edges
for every run of a process, so runs and the optimal loss line up.

Checkpoints (model, EMA, optimizer, step, RNG states, logs so far) go atomically to the
checkpoint folder every ``checkpoint_every`` steps and when a signal arrives: the handler only
sets a flag, the checkpoint is written at the next step boundary, then the process exits:
  SIGUSR1 / SIGUSR2 -> exit code 3 (EXIT_PREEMPTED: SLURM's pre-walltime signal; requeue and
                       rerun the same command to resume)
  SIGTERM           -> exit code 143 (EXIT_TERMINATED, 128 + SIGTERM, after checkpointing)
  SIGINT (Ctrl-C)   -> exit code 130 (EXIT_INTERRUPTED, after checkpointing; a second Ctrl-C
                       stops at once, the checkpoint on disk being the last whole one)
The checkpoint folder is ``--checkpoint-dir``, else $DIFFOBJ_CHECKPOINT_DIR/<run_id>, else
RUN_DIR/checkpoints (not a workflow output, so it survives Snakemake deleting outputs).
Rerunning the same command resumes. A finished run deletes its checkpoint once its outputs are
written, unless ``training.keep_checkpoint``; then raising training.steps continues it.

Multi-GPU: launched with WORLD_SIZE > 1 (torchrun) or SLURM_NTASKS > 1 (srun, with
MASTER_ADDR / MASTER_PORT set), training runs under DDP with the batch split across ranks;
rank 0 writes logs, checkpoints and outputs. The world size does not change the experiment:
rank r trains on rows [r B/W, (r+1) B/W) of the step's global batch, with the data, noise
levels, noise, masks, augmentations and label dropout those rows get in a 1-process run
(``seeds.Shard``), and gradients are averaged over ranks; what remains world-size dependent
is dropout inside the network (each rank draws masks for its rows from its own stream) and
the order of float sums (reductions across ranks). So a checkpoint resumes in another world
size (a note says so); with dropout 0 the runs agree to float rounding.

The pieces, one job each: ``devices`` (device, threads, DDP world), ``seeds`` (the random
streams), ``train_data`` (images on the device, their order), ``train_log`` (binned errors, log
columns), ``checkpoint`` (signals, atomic checkpoints, exit codes), and ``diffobj.training``:
``setup``, ``objective`` (the loss, built once), ``state`` (what a checkpoint holds), ``step``,
``loop``, ``outputs``, ``evaluate``. This module wires them: ``train`` sets the run up and runs
its loop. A trained run is read by ``diffobj.runs.load_run``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from diffobj.devices import distributed_env
from diffobj.run_config import RunConfig, load_run_config
from diffobj.training.loop import TrainResult, run
from diffobj.training.setup import TrainOptions, setup

__all__ = ["TrainOptions", "TrainResult", "train"]


def train(
    run_config: str | Path | RunConfig, out_dir: str | Path, options: TrainOptions | None = None
) -> TrainResult:
    """Train one run (resuming from its checkpoint if there is one); see the module docstring.

    Raises ``Preempted`` after checkpointing when SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT arrives.
    """
    options = options or TrainOptions()
    config_path = None if isinstance(run_config, RunConfig) else Path(run_config)
    config = run_config if isinstance(run_config, RunConfig) else load_run_config(run_config)
    dist_ = distributed_env()
    owns_group = dist_.world > 1 and not dist.is_initialized()
    if owns_group:
        backend = "nccl" if options.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist_.local_rank)
        dist.init_process_group(backend, rank=dist_.rank, world_size=dist_.world)
    try:
        return run(setup(config, Path(out_dir), options, config_path))
    finally:
        if owns_group:  # gloo/nccl abort at exit when the group is left open
            dist.destroy_process_group()
