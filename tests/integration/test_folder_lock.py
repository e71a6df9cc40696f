"""One writer per output folder: prepare, train, obfuscate and reproduce refuse a folder another process is
writing, naming its pid; a lock left by a process that died does not block."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from meddenoise.cli import main
from meddenoise.errors import MeddenoiseError
from meddenoise.locking import LOCK_NAME, folder_lock
from time_limits import ANSWER

HOLD = "import sys, time\nfrom meddenoise.locking import folder_lock\nwith folder_lock(sys.argv[1]):\n"
HOLD += "    print('locked', flush=True)\n    time.sleep(120)\n"


@pytest.fixture
def holder():
    """Factory: `holder(folder)` -> a running process that holds the folder's lock (killed afterwards)."""
    started = []

    def hold(folder):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
        )
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def busy_message(process, folder) -> str:
    return f"another meddenoise process (pid {process.pid}) is writing {folder}"


def test_a_second_writer_is_refused_and_a_dead_holder_does_not_block(tmp_path, holder):
    folder = tmp_path / "out"
    process = holder(folder)
    with pytest.raises(MeddenoiseError, match=re.escape(busy_message(process, folder))), folder_lock(folder):
        pass
    process.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file (and pid) stay behind
    process.wait()
    assert (folder / LOCK_NAME).read_text().strip() == str(process.pid)
    with folder_lock(folder):
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists()


def test_the_lock_nests_within_one_process(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with folder_lock(folder):
        with folder_lock(folder):
            pass
        assert (folder / LOCK_NAME).is_file()  # still held by the outer block
        probe = subprocess.run(
            [sys.executable, "-c", HOLD, str(folder)], capture_output=True, text=True, timeout=ANSWER
        )
        assert probe.returncode != 0 and f"(pid {os.getpid()})" in probe.stderr


def test_prepare_refuses_a_folder_being_written(tmp_path, holder, image_files, capsys):
    root = tmp_path / "xrays"
    for index, image in enumerate(image_files.smooth(4, 32)):
        image_files.png(root / f"p{index}" / "a.png", (image * 255).astype(np.uint8))
    out = tmp_path / "cache"
    process = holder(out)
    argv = ["prepare", "--source", "folder", "--root", str(root), "--out", str(out), "--size", "16"]
    assert main([*argv, "--quiet", "--workers", "1"]) == 2
    assert busy_message(process, out) in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the holder's was touched


def test_train_refuses_a_run_folder_being_written(tmp_path, holder, make_prepared, capsys):
    data, out = make_prepared(n=12, size=16), tmp_path / "run"
    process = holder(out)
    argv = ["train", "--data", str(data), "--out", str(out), "--model", "dncnn", "--base-channels", "4"]
    assert main([*argv, "--epochs", "1", "--quiet", "--device", "cpu", "--resume", "auto"]) == 2
    assert busy_message(process, out) in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_obfuscate_refuses_an_export_folder_being_written(tmp_path, holder, make_prepared, capsys):
    data, out = make_prepared(n=12, size=16), tmp_path / "export"
    process = holder(out)
    argv = ["obfuscate", "--data", str(data), "--out", str(out), "--private-map", str(tmp_path / "map.csv")]
    assert main(argv) == 2
    assert busy_message(process, out) in capsys.readouterr().err
    assert not (tmp_path / "map.csv").exists()


def test_reproduce_refuses_an_output_folder_being_written(tmp_path, holder, make_prepared, capsys):
    data, out = make_prepared(n=12, size=16), tmp_path / "repro"
    process = holder(out)
    argv = ["reproduce", "--preset", "smoke", "--out", str(out), "--data", str(data), "--device", "cpu"]
    assert main(argv) == 2
    assert busy_message(process, out) in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
