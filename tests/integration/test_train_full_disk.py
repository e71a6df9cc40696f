"""Full disks during train: free space is checked before each checkpoint, a failed write stops the run with a
message naming the folder, and the previous checkpoints stay consistent and resumable."""

from __future__ import annotations

import collections
import errno

import torch

from meddenoise.cli import main
from meddenoise.engine import checkpoint
from meddenoise.engine.checkpoint import load_weights

Usage = collections.namedtuple("Usage", "total used free")
TINY = ["--model", "dncnn", "--base-channels", "8", "--model-options", "num_layers=3", "--norm", "group"]
TINY += ["--batch-size", "4", "--quiet", "--no-evaluate-test", "--device", "cpu", "--patience", "0"]


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


def checkpoint_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "checkpoints").iterdir())}


def test_a_checkpoint_that_does_not_fit_stops_the_run_and_keeps_the_previous_one(
    make_prepared, tmp_path, monkeypatch, capsys
):
    data, out = make_prepared(n=16, size=16), tmp_path / "run"
    assert train(data, out, "--epochs", "1") == 0
    before = checkpoint_bytes(out)
    with monkeypatch.context() as patch:
        patch.setattr("meddenoise.fileio.shutil.disk_usage", lambda path: Usage(10**9, 10**9, 50_000))
        assert train(data, out, "--epochs", "2", "--resume", "auto") == 2
    message = capsys.readouterr().err
    assert "the checkpoint needs" in message and f"in {out / 'checkpoints'}, 0.1 MB free" in message
    assert "training stopped; the previous checkpoint" in message and "--resume" in message
    assert "Traceback" not in message
    assert checkpoint_bytes(out) == before
    assert train(data, out, "--epochs", "2", "--resume", "auto") == 0  # space is back: it continues


def test_a_write_failing_inside_the_checkpoint_leaves_a_resumable_run(
    make_prepared, tmp_path, monkeypatch, capsys
):
    data = make_prepared(n=16, size=16)
    uninterrupted, failed = tmp_path / "uninterrupted", tmp_path / "failed"
    assert train(data, uninterrupted, "--epochs", "2", "--lr", "0.003") == 0
    assert train(data, failed, "--epochs", "1", "--lr", "0.003") == 0

    write = checkpoint.atomic_write_bytes

    def full_for_the_state(path, payload):
        if path.name == "last.state.pt":  # the best weights of the new epoch were already written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, payload)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "atomic_write_bytes", full_for_the_state)
        assert train(data, failed, "--epochs", "2", "--lr", "0.003", "--resume") == 2
    message = capsys.readouterr().err
    assert f"writing to the run folder {failed} failed: No space left on device" in message
    assert "last.state.pt" in message and "previous checkpoint" in message
    assert not list((failed / "checkpoints").glob(".*.tmp"))  # no partial file left

    assert train(data, failed, "--epochs", "2", "--lr", "0.003", "--resume") == 0
    for name in ("last.safetensors", "best.safetensors"):
        expected, got = (load_weights(run / "checkpoints" / name)[0] for run in (uninterrupted, failed))
        for key, value in expected.items():
            assert torch.equal(got[key], value), (name, key)


def test_a_full_disk_outside_the_checkpoint_is_reported_too(make_prepared, tmp_path, monkeypatch, capsys):
    data, out = make_prepared(n=16, size=16), tmp_path / "run"

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("meddenoise.engine.run_files.atomic_write_text", full)  # metrics.jsonl
    assert train(data, out, "--epochs", "1") == 2
    message = capsys.readouterr().err
    assert f"writing to the run folder {out} failed: No space left on device" in message
    assert "no checkpoint had been written yet" in message
