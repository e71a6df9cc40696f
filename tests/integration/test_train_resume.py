"""SIGKILL a run mid-epoch, resume it: it ends with bitwise the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from meddenoise.engine.checkpoint import load_training_state, load_weights
from time_limits import APPEAR, RUN

TIMING_KEYS = {
    "train_seconds",
    "val_seconds",
    "images_per_second",
    "peak_memory_mb",
    "cpu_seconds",
    "load_average",
}


def train_command(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "meddenoise",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--base-channels",
        "8",
        "--depth",
        "3",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--lr",
        "0.003",
        "--checkpoint-every",
        "3",
        "--no-evaluate-test",
        *extra,
    ]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command):
    completed = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=RUN)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def assert_same_weights(run_a, run_b):
    weights_a, _ = load_weights(run_a / "checkpoints" / "last.safetensors")
    weights_b, _ = load_weights(run_b / "checkpoints" / "last.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


def metrics_without_timings(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(make_prepared, tmp_path):
    data = make_prepared(n=64, size=32)
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = subprocess.Popen(
        train_command(data, uninterrupted),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # (runs alongside, to save wall time)
    process = subprocess.Popen(
        train_command(data, killed), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state_path = killed / "checkpoints" / "last.state.pt"
    deadline = time.monotonic() + APPEAR
    while not state_path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert process.poll() is None, (
        "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_training_state(state_path)
    assert state["progress"]["step_in_epoch"] > 0, "the kill should come after a mid-epoch checkpoint"

    assert reference.wait(timeout=RUN) == 0, reference.stderr.read().decode()[-3000:]
    resumed = run([*train_command(data, killed), "--resume"])
    assert "resumed from" in resumed.stdout
    assert_same_weights(uninterrupted, killed)
    assert metrics_without_timings(uninterrupted) == metrics_without_timings(killed)
