"""Full disks during prepare: space is checked and reserved before decoding, a refused or failed write leaves
no partial files and no running workers, and the message says how much is needed where."""

from __future__ import annotations

import collections
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from meddenoise.cli import main
from meddenoise.data import cache, manifest
from meddenoise.data.manifest import PARTIAL_PREFIX, load_prepared
from time_limits import ANSWER, APPEAR, RUN, STOPS_WITHIN

Usage = collections.namedtuple("Usage", "total used free")


@pytest.fixture
def xrays(tmp_path, image_files) -> Path:
    root = tmp_path / "xrays"
    for index, image in enumerate(image_files.smooth(12, 48, seed=3)):
        image_files.png(root / f"patient{index % 6}" / f"view{index}.png", (image * 255).astype(np.uint8))
    return root


def prepare_argv(root, out, *extra):
    return ["prepare", "--source", "folder", "--root", str(root), "--out", str(out), "--size", "32"] + [
        "--patient-from", "folder", "--quiet", *extra
    ]  # fmt: skip


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((PARTIAL_PREFIX, "images.npy")))


def test_short_space_is_refused_before_decoding_and_keeps_the_earlier_cache(
    tmp_path, xrays, monkeypatch, capsys
):
    out = tmp_path / "cache"
    assert main(prepare_argv(xrays, out, "--workers", "1")) == 0
    decoded = []
    original = cache._process_one
    monkeypatch.setattr(cache, "_process_one", lambda *a: decoded.append(a) or original(*a))
    monkeypatch.setattr("meddenoise.fileio.shutil.disk_usage", lambda path: Usage(10**9, 10**9, 2_000))
    assert main(prepare_argv(xrays, out, "--workers", "1", "--force")) == 2
    message = capsys.readouterr().err
    assert f"in {out}, 0.0 MB free" in message and "needs" in message and "Traceback" not in message
    assert decoded == []  # refused before any image was decoded
    assert len(load_prepared(out)) == 12  # the earlier, complete cache is still valid


def test_a_reservation_the_disk_refuses_is_a_clear_error(tmp_path, xrays, monkeypatch, capsys):
    def no_room(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("meddenoise.fileio._allocate", no_room)
    out = tmp_path / "cache"
    assert main(prepare_argv(xrays, out, "--workers", "1")) == 2
    assert f"needs 0.0 MB in {out}" in capsys.readouterr().err
    assert leftovers(out) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_write_error_removes_partial_files(tmp_path, xrays, monkeypatch, capsys, workers):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(manifest, "atomic_write_text", full)  # the manifest write fails
    out = tmp_path / "cache"
    assert main(prepare_argv(xrays, out, "--workers", workers)) == 2
    message = capsys.readouterr().err
    assert f"writing the prepared folder {out} failed: No space left on device" in message
    assert "partial files were removed" in message
    assert leftovers(out) == [] and not (out / "prepare.json").exists()


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            timeout=ANSWER,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and a kernel that allows mounting here; else the test is skipped)."""
    folder = tmp_path / "small_disk"
    if not mount_tmpfs(folder, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root, or not permitted)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=ANSWER)


# Skips the up-front free-space check, so the reservation itself meets the full disk.
WITHOUT_CHECK = (
    "import sys\nimport meddenoise.data.manifest as m\nfrom meddenoise.cli import main\n"
    "m.require_free_space = lambda *a, **k: None\nsys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("check", [True, False], ids=["space-check", "reservation"])
def test_a_real_full_disk_gives_a_message_not_sigbus(tmp_path, xrays, small_disk, check):
    out = small_disk / "cache"
    argv = prepare_argv(xrays, out, "--size", "512", "--workers", "2")  # 12 x 512 x 512 bytes: 3 MB
    command = [sys.executable, "-m", "meddenoise"] if check else [sys.executable, "-c", WITHOUT_CHECK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=RUN, env=env)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert re.search(rf"needs 3\.[12] MB in {re.escape(str(out))}, 1\.0 MB free", done.stderr), done.stderr
    assert leftovers(out) == []


SLOW_PREPARE = """
import sys, time
from meddenoise.config import config_from_mapping
from meddenoise.data.cache import prepare
from meddenoise.data.prepare_config import PrepareConfig
from meddenoise.data.sources import build_source

config = config_from_mapping(PrepareConfig, {"source": "folder", "root": sys.argv[1], "out": sys.argv[2],
                                             "size": 32, "workers": 2, "quiet": True})
source = build_source(config)
decode = type(source).decode
type(source).decode = lambda self, record: time.sleep(0.5) or decode(self, record)
prepare(source, config)
"""


def children_of(pid: int) -> list[int]:
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


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_decoding_workers_exit_when_prepare_is_killed(tmp_path, xrays):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREPARE, str(xrays), str(tmp_path / "cache")], env=env
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + APPEAR
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.05)
            workers = children_of(parent.pid)
        assert len(workers) >= 2, "the decoding workers did not start"
        time.sleep(0.3)  # let them initialise
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + STOPS_WITHIN
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, workers)), "decoding workers outlived the prepare process"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def test_evaluate_on_a_full_disk_leaves_no_partial_folder_and_keeps_the_earlier_one(
    make_prepared, tmp_path, monkeypatch, capsys
):
    """Issue 23, row 21: evaluate on a full disk left per_image.csv and summary.csv without evaluation.json,
    after a traceback."""
    from meddenoise.evaluation import files

    data, run = make_prepared(n=16, size=16, patients=8), tmp_path / "run"
    train = ["train", "--data", str(data), "--out", str(run), "--model", "dncnn", "--base-channels", "4",
             "--model-options", "num_layers=3", "--epochs", "1", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(train) == 0
    out = tmp_path / "evaluation"
    real = files.write_rows

    def full(path, columns, rows):
        if Path(path).name == files.SUMMARY_FILE:  # per_image.csv is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, columns, rows)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_rows", full)
        assert main(["evaluate", str(run), "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        f"writing the evaluation {out} failed: No space left on device" in err
        and "nothing was written" in err
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".evaluation")]
    assert main(["evaluate", str(run), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    before = (out / files.INFO_FILE).read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(files, "write_rows", full)
        assert main(["evaluate", str(run), "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    assert "the earlier evaluation there is kept" in capsys.readouterr().err
    assert (out / files.INFO_FILE).read_bytes() == before and (out / files.PER_IMAGE_FILE).is_file()


def test_no_address_space_for_the_new_images_keeps_the_earlier_cache(tmp_path, xrays, monkeypatch, capsys):
    """Issue 23, row 10: prepare under `ulimit -v` (--size 8192 --force): OSError traceback, the earlier valid
    cache lost its prepare.json, and a full-size sparse partial file stayed behind."""
    out = tmp_path / "cache"
    assert main(prepare_argv(xrays, out, "--workers", "1")) == 0
    real = np.lib.format.open_memmap

    def no_address_space(path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 4096)  # numpy sizes the file before mapping it
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_address_space)
    assert main(prepare_argv(xrays, out, "--workers", "1", "--force")) == 2
    message = capsys.readouterr().err
    assert "not enough memory or address space to map the new prepared images" in message
    assert "earlier prepared images there are intact" in message and "Traceback" not in message
    monkeypatch.setattr(np.lib.format, "open_memmap", real)
    assert len(load_prepared(out)) == 12  # prepare.json and the images of the earlier cache are untouched
    assert leftovers(out) == ["images.npy"]  # no partial left
