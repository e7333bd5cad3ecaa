"""A run can be watched: train_log.csv holds whole rows while the run trains, and a job log
(no progress bar) gets a plain line with step, images/s, loss and ETA at a steady cadence."""

import csv
import io
import re
import signal
import time

from test_train import _start, run_config

from diffobj.io import read_csv
from diffobj.train_log import ProgressLine, format_duration, log_columns

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
