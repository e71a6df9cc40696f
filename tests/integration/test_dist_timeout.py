"""A DDP process whose peer never answers (joining, or mid-training) stops with a clear error within the
--dist-timeout, instead of waiting forever; it leaves the process group so it exits normally."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from time_limits import ANSWER, APPEAR, PEER_DIST_TIMEOUT, STOPS_WITHIN

pytestmark = pytest.mark.slow

TINY = ["--model", "dncnn", "--base-channels", "8", "--model-options", "num_layers=3", "--norm", "group"]
TINY += ["--batch-size", "2", "--quiet", "--no-evaluate-test", "--device", "cpu", "--patience", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(rank: int, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def train_command(data, out, *extra):
    command = [sys.executable, "-m", "meddenoise", "train", "--data", str(data), "--out", str(out)]
    return [*command, *TINY, *extra]


def test_a_rank_whose_peers_never_start_gives_up_with_a_clear_error(make_prepared, tmp_path):
    data = make_prepared(n=16, size=16)
    command = train_command(data, tmp_path / "run", "--strategy", "ddp", "--dist-timeout", "2")
    started = time.monotonic()
    completed = subprocess.run(
        command, env=rank_environment(1, free_port()), capture_output=True, text=True, timeout=ANSWER
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "could not join the process group" in completed.stderr
    assert "--dist-timeout" in completed.stderr
    assert time.monotonic() - started < STOPS_WITHIN


def test_a_peer_that_hangs_mid_training_ends_the_run_with_a_clear_error(make_prepared, tmp_path):
    data = make_prepared(n=24, size=16)
    port = free_port()
    common = ["--strategy", "ddp", "--epochs", "500", "--dist-timeout", f"{PEER_DIST_TIMEOUT:g}"]
    survivor = subprocess.Popen(
        train_command(data, tmp_path / "run", *common),
        env=rank_environment(0, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peer = subprocess.Popen(
        train_command(data, tmp_path / "peer", *common),
        env=rank_environment(1, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log = tmp_path / "run" / "train.log"
        deadline = time.monotonic() + APPEAR
        # Both ranks have exchanged data once the noisy-input validation (an all-reduce) is logged.
        while time.monotonic() < deadline and survivor.poll() is None:
            if log.is_file() and "noisy input" in log.read_text():
                break
            time.sleep(0.05)
        assert survivor.poll() is None, survivor.stderr.read()[-3000:]
        peer.send_signal(signal.SIGSTOP)  # a node that stops answering, without closing its connections
        stopped = time.monotonic()
        _, stderr = survivor.communicate(timeout=STOPS_WITHIN)
        waited = time.monotonic() - stopped
    finally:
        peer.kill()
        peer.wait()
        if survivor.poll() is None:
            survivor.kill()
            survivor.wait()
    assert survivor.returncode == 2, stderr[-3000:]
    assert "communication with the other training processes failed or got no answer" in stderr
    assert "Traceback" not in stderr
    assert waited < STOPS_WITHIN
