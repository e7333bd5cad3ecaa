"""A finished run's outputs in RUN_DIR (train.py's docstring lists them), each atomic."""

from __future__ import annotations

import shutil
from pathlib import Path

from diffobj.io import atomic_path, write_csv, write_json
from diffobj.provenance import runtime
from diffobj.run_config import dump_run_config
from diffobj.runs import model_record
from diffobj.training.checkpoint import save_atomic
from diffobj.training.evaluate import evaluate_bins
from diffobj.training.setup import Setup
from diffobj.training.train_log import log_columns


def write_outputs(s: Setup) -> None:
    eval_rows = evaluate_bins(s)
    out, state = s.out_dir, s.state
    write_csv(out / "train_log.csv", state.log_rows, log_columns(len(s.edges) - 1))
    write_csv(out / "train_bins.csv", state.bin_rows, ["step", "bin", "log_snr", "error", "count"])
    write_csv(out / "eval_bins.csv", eval_rows, ["log_snr", "error", "stderr", "n"])
    write_json(out / "runtime.json", {"runtime": runtime(s.device)})
    record = model_record(
        s.config, s.data.image_shape, state.step, state.step * s.batch, state.ema.net
    )
    save_atomic(record, out / "model.pt")
    write_config(s.config_path, s.config.raw, out / "config.yaml")


def write_config(source: Path | None, raw: dict, path: Path) -> None:
    """The run config, copied verbatim from ``source`` (else written from ``raw``)."""
    if source is not None and Path(source).resolve() == path.resolve():
        return
    with atomic_path(path) as tmp:
        if source is not None:
            shutil.copyfile(source, tmp)
        else:
            tmp.write_text(dump_run_config(raw))
