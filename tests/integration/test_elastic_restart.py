"""Two simulated nodes on localhost (two torchrun launches, c10d rendezvous, one gloo process each).

- A worker killed mid-epoch is restarted by torchrun (--max-restarts 1); with `--resume auto` the restarted
  round continues from the last checkpoint and ends with bitwise the weights (and the metrics) of an
  uninterrupted run. This needs the restarted workers to form a new group although torchrun's shared store
  still holds the previous round's keys (engine/distributed.py `_round_store`).
- When a whole node dies, the survivor stops with a clear error within a bounded time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meddenoise.engine.checkpoint import load_weights
from time_limits import APPEAR, RUN, STOPS_WITHIN

pytestmark = pytest.mark.slow

TRAIN = ["--quiet", "--base-channels", "4", "--depth", "2", "--batch-size", "1", "--epochs", "2",
         "--limit-val", "4", "--no-evaluate-test", "--device", "cpu", "--checkpoint-every", "5",
         "--resume", "auto", "--dist-timeout", "60"]  # fmt: skip
# Measured, not computed: these differ between any two runs.
TIMING_KEYS = {
    "train_seconds",
    "val_seconds",
    "images_per_second",
    "peak_memory_mb",
    "cpu_seconds",
    "load_average",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment() -> dict[str, str]:
    drop = (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
    )
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def start_node(data, out, port, log, torchrun_options=(), train_options=()) -> subprocess.Popen:
    """One simulated node: a torchrun agent with one worker."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "elastic-test",
        "--max-restarts", "1", "--monitor-interval", "0.2", *torchrun_options,
        "-m", "meddenoise", "train", "--data", str(data), "--out", str(out), "--strategy", "ddp",
        *TRAIN, *train_options,
    ]  # fmt: skip
    with open(log, "w") as handle:
        return subprocess.Popen(
            command, env=environment(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop(*processes: subprocess.Popen) -> None:
    """End what a failed test left running: the agents and their workers (in sessions of their own)."""
    for process in processes:
        if process.poll() is None:
            for pid in [*children(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()


def metrics_without_timings(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_tiny_prepared

    return write_tiny_prepared(tmp_path_factory.mktemp("elastic") / "prepared", n=90, size=16)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_interrupted(data, tmp_path):
    reference = subprocess.Popen(
        [sys.executable, "-m", "meddenoise", "train", "--data", str(data),
         "--out", str(tmp_path / "reference"), "--strategy", "ddp", "--nproc", "2", *TRAIN],
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out, port = tmp_path / "elastic", free_port()
    nodes = [start_node(data, out, port, tmp_path / f"node{i}.log") for i in range(2)]
    try:
        wait_for(lambda: (out / "checkpoints" / "last.state.pt").is_file(), APPEAR, "the first checkpoint")
        workers = children(nodes[1].pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)  # mid-epoch: checkpoints come every 5 of the epoch's steps
        for node in nodes:
            node.wait(timeout=RUN)
    finally:
        stop(*nodes)
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "exitcode: -9" in logs[1]
    assert "resumed from" in "".join(logs)
    assert "training finished (epochs)" in "".join(logs)
    stdout, _ = reference.communicate(timeout=RUN)
    assert reference.returncode == 0, stdout[-3000:]
    expected = load_weights(tmp_path / "reference" / "checkpoints" / "last.safetensors")[0]
    restarted = load_weights(out / "checkpoints" / "last.safetensors")[0]
    assert expected.keys() == restarted.keys()
    for name, value in expected.items():
        assert torch.equal(restarted[name], value), name
    assert metrics_without_timings(out) == metrics_without_timings(tmp_path / "reference")


def test_when_a_whole_node_dies_the_survivor_stops_with_a_clear_error_in_bounded_time(data, tmp_path):
    out, port = tmp_path / "run", free_port()
    # The survivor's restart waits at most join_timeout for the lost node to come back to the rendezvous.
    long_run = ("--epochs", "50")  # killed long before its end
    nodes = [
        start_node(data, out, port, tmp_path / f"node{i}.log", ("--rdzv-conf", "join_timeout=15"), long_run)
        for i in range(2)
    ]
    try:
        wait_for(lambda: (out / "checkpoints" / "last.state.pt").is_file(), APPEAR, "the first checkpoint")
        workers = children(nodes[1].pid)  # torchrun starts them in sessions of their own
        died = time.monotonic()
        for pid in [nodes[1].pid, *workers]:  # the agent and its worker: the node is gone
            os.kill(pid, signal.SIGKILL)
        nodes[1].wait()
        nodes[0].wait(timeout=STOPS_WITHIN)
        seconds = time.monotonic() - died
    finally:
        stop(*nodes)
    log = (tmp_path / "node0.log").read_text()
    assert nodes[0].returncode != 0, log[-3000:]
    assert seconds < STOPS_WITHIN, seconds
    assert "communication with the other training processes failed" in log, log[-3000:]
    assert "with `--resume auto` a restart" in log
