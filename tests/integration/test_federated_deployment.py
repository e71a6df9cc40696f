"""Deployment on localhost: a SuperLink and one SuperNode per site as separate processes (Flower's own
command-line programs), the app submitted with `flwr run` to the folder `meddenoise federated --flower-app`
writes. Every process this test starts (and their children) is stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from time_limits import APPEAR, RUN, STOPS_WITHIN

pytest.importorskip("flwr")

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc: no extra dependency)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = APPEAR) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the SuperLink exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the SuperLink did not listen on port {port} within {seconds:.0f} s")


def _stop(processes: list[subprocess.Popen]) -> None:
    pids = [p.pid for p in processes]
    pids += [child for p in processes for child in _children(p.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOPS_WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + STOPS_WITHIN
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(BIN)) is None, reason="Flower's CLI not installed"
)
def test_superlink_and_supernodes_over_the_network_on_localhost(make_prepared, tmp_path):
    sites = {
        "hospital-a": make_prepared(n=16, patients=4, seed=1),
        "hospital-b": make_prepared(n=16, patients=4, seed=2),
    }
    link_port = _free_port()
    environment = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    run_dir = tmp_path / "run"
    write_app = subprocess.run(
        [
            sys.executable,
            "-m",
            "meddenoise",
            "federated",
            "--flower-app",
            str(tmp_path / "app"),
            "--sites",
            "2",
            "--rounds",
            "1",
            "--out",
            str(run_dir),
            "--model",
            "dncnn",
            "--base-channels",
            "8",
            "--model-options",
            "num_layers=3",
            "--norm",
            "group",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-evaluate-test",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN,
    )
    assert write_app.returncode == 0, write_app.stderr[-3000:]

    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, command: list[str]) -> None:
        with open(logs / f"{name}.log", "w") as handle:  # the child keeps its own copy of the descriptor
            processes.append(
                subprocess.Popen(
                    command, env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    try:
        start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--port",
                str(link_port),
            ],
        )
        _wait_for_port(link_port, processes[0])
        for name, folder in sites.items():
            start(
                name,
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"data='{folder}' name='{name}'",
                ],
            )
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(tmp_path / "app"), "test", "--stream"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-3000:]
        assert "round 1/1 (2 site(s))" in output, output[-3000:]
    finally:
        _stop(processes)
        for process in processes:
            assert process.poll() is not None
    described = json.loads((run_dir / "sites.json").read_text())["sites"]
    assert sorted(d["name"] for d in described) == sorted(sites)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and set(records[0]["site_metrics"]) == set(sites)
    assert records[0]["bytes_sent"] > 0 and (run_dir / "checkpoints" / "best.safetensors").is_file()
