"""`train --log tensorboard`: epoch records as TensorBoard scalars beside metrics.jsonl, or a clear error."""

from __future__ import annotations

import json
import sys
import types

import pytest

from meddenoise.cli import main


def train(data, out, *extra):
    return main(
        ["train", "--data", str(data), "--out", str(out), "--model", "dncnn", "--base-channels", "4",
         "--model-options", "num_layers=3", "--norm", "group", "--epochs", "2", "--batch-size", "8",
         "--device", "cpu", "--quiet", "--no-evaluate-test", *extra]
    )  # fmt: skip


def test_missing_tensorboard_is_a_clear_error_before_training(make_prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    assert train(make_prepared(n=16, size=16), tmp_path / "run", "--log", "tensorboard") == 2
    error = capsys.readouterr().err
    assert "pip install 'meddenoise[tensorboard]'" in error and "(--log)" in error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_each_epoch_record_becomes_scalars_at_its_epoch(make_prepared, tmp_path, monkeypatch):
    written = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)
        def __init__(self, log_dir):
            written.append(("open", log_dir))

        def add_scalar(self, tag, value, global_step):
            written.append((tag, value, global_step))

        def flush(self):
            pass

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    out = tmp_path / "run"
    assert train(make_prepared(n=16, size=16), out, "--log", "tensorboard") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert written[0] == ("open", str(out / "tensorboard")) and written[-1] == ("close",)
    for record in records:
        scalars = {tag: value for tag, value, step in written[1:-1] if step == record["epoch"]}
        assert scalars["loss/train"] == pytest.approx(record["train_loss"])
        assert scalars["quality/val_psnr"] == pytest.approx(record["val_psnr"])
    assert {step for _, _, step in written[1:-1]} == {1, 2}
