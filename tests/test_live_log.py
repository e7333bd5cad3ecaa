"""A run can be watched: train_log.csv holds whole rows while the run trains, TensorBoard
reads the same rows from RUN_DIR/tensorboard, and a job log (no progress bar) gets a plain line
with step, images/s, loss and ETA at a steady cadence."""

import csv
import io
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from test_train import _start, quiet, run_config

from diffobj.io import read_csv
from diffobj.training.checkpoint import CHECKPOINT_NAME
from diffobj.training.train import train
from diffobj.training.train_log import ProgressLine, event_tag, format_duration, log_columns

PROGRESS = re.compile(
    r"^\S+: step (\d+)/100000, \d+ images/s, loss [-+.\deinf]+, ETA \d+:\d\d:\d\d$"
)


def test_the_log_of_a_run_still_training_reads_as_whole_rows(tmp_path):
    cfg = run_config(tmp_path, steps=100_000, checkpoint_every=100_000, log_every=2)
    out = tmp_path / "run"
    proc = _start(cfg, out)
    try:
        first = proc.stderr.readline().strip()  # the first log step always gets a line
        assert PROGRESS.match(first), first
        log = out / "train_log.csv"
        deadline = time.time() + 60
        rows: list[dict[str, str]] = []
        while len(rows) < 3 and time.time() < deadline:
            rows = read_csv(log)
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended: the log was not read while it trained"
        # TensorBoard sees the rows as they come too (each is flushed at its log step)
        events: list[int] = []
        while len(events) < 3 and time.time() < deadline:
            events = [step for step, _ in scalars(out, "loss")]
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended: its events were not read while it trained"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert len(rows) >= 3
    text = log.read_text()
    header = text.splitlines()[0].split(",")
    assert header[: len(log_columns(0))] == log_columns(0)
    parsed = list(csv.reader(io.StringIO(text)))[1:]
    assert all(len(r) == len(header) for r in parsed)  # whole rows, never a torn last line
    assert [int(r[0]) for r in parsed] == [2 * (i + 1) for i in range(len(parsed))]


def scalars(run_dir: Path, column: str, events: EventAccumulator | None = None):
    """(step, value) of one train_log.csv column, as TensorBoard reads them from the run
    (``events``: a TensorBoard that has been watching the run, reloaded)."""
    if events is None:
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={SCALARS: 0})
    events.Reload()
    tag = event_tag(column)
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_events_match_the_csv(run_dir: Path, events: EventAccumulator | None = None) -> None:
    rows = read_csv(run_dir / "train_log.csv")
    for column in rows[0]:
        if column == "step":
            continue
        expected = [(int(r["step"]), float(r[column])) for r in rows if r[column] != ""]
        got = scalars(run_dir, column, events)
        assert [s for s, _ in got] == [s for s, _ in expected], column
        # TensorBoard keeps float32
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), column


def test_tensorboard_holds_the_rows_of_train_log_across_a_resume(tmp_path):
    """A run killed after logging steps 2, 4 and 6 but last checkpointed at step 4 (as SIGKILL
    between checkpoints leaves it) resumes at 4: TensorBoard then shows steps 2, 4, 6, 8 once
    each, with the values of the resumed run's train_log.csv, whether it was started
    afterwards or had been watching all along."""
    cfg = run_config(tmp_path, steps=8, log_every=2, checkpoint_every=4)
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / CHECKPOINT_NAME
    train(cfg, out, quiet(stop_after=4))
    at_step_4 = tmp_path / "at_step_4.pt"
    shutil.copyfile(checkpoint, at_step_4)
    train(cfg, out, quiet(stop_after=6))
    watching = EventAccumulator(str(out / "tensorboard"), size_guidance={SCALARS: 0})
    assert [s for s, _ in scalars(out, "loss", watching)] == [2, 4, 6]
    shutil.copyfile(at_step_4, checkpoint)  # the checkpoint at step 6 never happened
    train(cfg, out, quiet())
    assert [int(r["step"]) for r in read_csv(out / "train_log.csv")] == [2, 4, 6, 8]
    assert_events_match_the_csv(out)
    assert_events_match_the_csv(out, watching)


def test_progress_lines_come_at_most_every_interval_and_at_the_last_step():
    times = iter([0.0, 10.0, 31.0, 40.0, 45.0])
    out = io.StringIO()
    line = ProgressLine("r", steps=500, batch=32, every=30.0, clock=lambda: next(times), file=out)
    for step in (100, 200, 300, 400, 500):
        line.update({"step": step, "images_per_s": 320.0, "loss": 0.5})
    printed = out.getvalue().splitlines()
    # t = 0 (first), t = 31 (30 s after it), and the last step; not t = 10 or t = 40
    assert [int(p.split()[2].split("/")[0]) for p in printed] == [100, 300, 500]
    # 400 steps left x 32 images at 320 images/s = 40 s
    assert printed[0] == "r: step 100/500, 320 images/s, loss 0.5, ETA 0:00:40"
    assert printed[-1].endswith("ETA 0:00:00")


def test_durations_read_as_hours_minutes_seconds():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(float("nan")) == "?"
