"""DP-SGD end to end on CPU: epsilon per epoch and in the summary, a clean error for BatchNorm, and 2 gloo
ranks giving the weights of one process with the same global batch (same unit draws, noise added once)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from meddenoise.engine.checkpoint import load_weights
from time_limits import RUN

pytestmark = pytest.mark.slow

COMMON = ["--quiet", "--model", "unet", "--base-channels", "4", "--depth", "2", "--epochs", "2"]
COMMON += ["--device", "cpu", "--no-evaluate-test", "--dp-delta", "1e-3"]


def train(data, out, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "meddenoise", "train", "--data", str(data), "--out", str(out)]
    return subprocess.run([*command, *COMMON, *extra], env=env, capture_output=True, text=True, timeout=RUN)


def ok(completed):
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-3000:])
    return completed


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory):
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("dp")
    data = write_tiny_prepared(root / "prepared", n=48, size=32, patients=12)
    noise = ["--norm", "group", "--dp-noise-multiplier", "0.8"]
    runs = {name: root / name for name in ("single", "ddp", "eps")}
    ok(train(data, runs["single"], *noise, "--batch-size", "8"))
    ok(train(data, runs["ddp"], *noise, "--batch-size", "4", "--strategy", "ddp", "--nproc", "2"))
    ok(train(data, runs["eps"], "--norm", "group", "--dp-epsilon", "4", "--batch-size", "8"))
    return data, runs


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run):
    with open(run / "summary.csv", newline="") as handle:
        return next(csv.DictReader(handle))


def test_epsilon_is_recorded_per_epoch_and_ends_at_the_target(dp_runs):
    _, runs = dp_runs
    spent = [r["dp_epsilon"] for r in metrics(runs["eps"])]
    assert len(spent) == 2 and 0 < spent[0] < spent[1]
    assert spent[1] == pytest.approx(4.0, rel=0.02)
    row = summary(runs["eps"])
    assert float(row["dp_epsilon"]) == pytest.approx(spent[1])
    assert float(row["dp_target_epsilon"]) == 4.0 and row["dp_unit"] == "patient"
    assert int(row["dp_units"]) == 6  # the training split's patients (groups)
    log = (runs["eps"] / "train.log").read_text()
    assert "DP-SGD" in log and "Poisson sampling" in log


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(dp_runs):
    _, runs = dp_runs
    ddp, single = (load_weights(runs[n] / "checkpoints" / "last.safetensors")[0] for n in ("ddp", "single"))
    assert ddp.keys() == single.keys()
    for name in ddp:
        assert (ddp[name] - single[name]).abs().max() < 1e-5, name
    spent = {name: [r["dp_epsilon"] for r in metrics(runs[name])] for name in ("ddp", "single")}
    assert spent["ddp"] == spent["single"]


def test_a_batchnorm_model_is_refused_with_a_clear_error(dp_runs, tmp_path):
    data, _ = dp_runs
    completed = train(data, tmp_path / "bn", "--norm", "batch", "--dp-epsilon", "8")
    assert completed.returncode == 2
    assert "norm=group" in completed.stderr and "(--norm)" in completed.stderr
    assert "Traceback" not in completed.stderr
