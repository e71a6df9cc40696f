"""SIGTERM (a scheduler's preemption, `kill`) stops `train` cleanly: the last checkpoint is written, the
command says where it stopped and how to continue, exits with 143, and `--resume` continues the run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

from time_limits import APPEAR, RUN, STOPS_WITHIN

TRAIN = ["--model", "dncnn", "--base-channels", "8", "--model-options", "num_layers=4", "--norm", "group",
         "--batch-size", "4", "--quiet", "--no-evaluate-test", "--device", "cpu",
         "--patience", "0"]  # fmt: skip


def epochs_recorded(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def test_sigterm_saves_the_run_says_how_to_continue_and_resume_finishes_it(make_prepared, tmp_path):
    data, out = make_prepared(n=96, size=32, patients=24), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "meddenoise", "train", "--data", str(data), "--out", str(out), *TRAIN]
    # far more epochs than the test waits for: SIGTERM arrives long before the run could end by itself
    process = subprocess.Popen(
        [*command, "--epochs", "500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + APPEAR
        while not epochs_recorded(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        assert epochs_recorded(out), "no epoch finished in time"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=STOPS_WITHIN)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "meddenoise train: terminated (SIGTERM) at step " in stderr and "resume to continue" in stderr
    assert "(--resume)" in stderr  # the CLI names the flag of the parameter
    assert "Traceback" not in stderr
    with (out / "summary.csv").open() as handle:
        assert next(csv.DictReader(handle))["stop_reason"] == "terminated"
    stopped_at = max(epochs_recorded(out))
    assert stopped_at < 500
    # the same command with --resume (and an end close by) continues from the checkpoint to the end
    finished = subprocess.run(
        [*command, "--epochs", str(stopped_at + 1), "--resume"], env=env, capture_output=True, text=True,
        timeout=RUN,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "resumed from" in finished.stdout + finished.stderr
    assert max(epochs_recorded(out)) == stopped_at + 1
    with (out / "summary.csv").open() as handle:
        assert next(csv.DictReader(handle))["stop_reason"] == "epochs"


def test_sigterm_to_the_ddp_launcher_stops_every_worker_and_the_run_resumes(make_prepared, tmp_path):
    """The launcher passes SIGTERM on to torchrun and its workers: they stop at one step, keep the last
    checkpoint and exit, so the folder lock is free and `--resume` continues (before, the launcher exited
    alone and both workers kept training, holding the lock)."""
    data, out = make_prepared(n=96, size=32, patients=24), tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "meddenoise", "train", "--data", str(data), "--out", str(out), *TRAIN,
               "--strategy", "ddp", "--nproc", "2", "--batch-size", "2"]  # fmt: skip
    launcher = subprocess.Popen(
        [*command, "--epochs", "500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + APPEAR
        while not epochs_recorded(out) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.poll() is None, launcher.communicate()
        assert epochs_recorded(out), "no epoch finished in time"
        launcher.send_signal(signal.SIGTERM)  # the launcher only, as a scheduler or `kill PID` would
        _, stderr = launcher.communicate(timeout=STOPS_WITHIN)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 143, stderr[-3000:]
    assert "meddenoise train: terminated (SIGTERM): the 2 torchrun worker(s) were asked to stop" in stderr
    stopped_at = max(epochs_recorded(out))
    # no worker outlived the launcher: the folder lock is free and the run continues
    finished = subprocess.run(
        [*command, "--epochs", str(stopped_at + 1), "--resume"], env=env, capture_output=True, text=True,
        timeout=RUN,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert max(epochs_recorded(out)) == stopped_at + 1
