"""`train --init-from RUN|CHECKPOINT`: a run starts from another run's weights (pretraining, then
fine-tuning), and a checkpoint of another network is refused with the differences named."""

from __future__ import annotations

import json

import pytest
import torch

from meddenoise.config import config_from_mapping
from meddenoise.engine.checkpoint import load_weights
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.train import fit
from meddenoise.errors import MeddenoiseError

BASE = {"model": "dncnn", "base_channels": 16, "model_options": ["num_layers=5"], "norm": "group",
        "noise_std": 0.2, "batch_size": 8, "device": "cpu", "quiet": True, "evaluate_test": False,
        "patience": 0}  # fmt: skip


def train(data, out, **overrides):
    return fit(config_from_mapping(TrainConfig, {**BASE, "data": str(data), "out": str(out), **overrides}))


def first_epoch(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def test_a_run_starts_from_the_weights_of_another(make_prepared, tmp_path):
    data = make_prepared(n=32, size=16, patients=8)
    pretrained = train(data, tmp_path / "pretrained", epochs=4, lr=2e-3)
    # lr 1e-9: the fine-tuning step barely moves the weights, so its first validation shows where it started
    started = train(data, tmp_path / "tuned", epochs=1, lr=1e-9, init_from=str(pretrained))
    scratch = train(data, tmp_path / "scratch", epochs=1, lr=1e-9)
    best = max(
        json.loads(line)["val_psnr"] for line in (pretrained / "metrics.jsonl").read_text().splitlines()
    )
    assert first_epoch(started)["val_psnr"] == pytest.approx(best, abs=0.05)
    assert first_epoch(started)["val_psnr"] > first_epoch(scratch)["val_psnr"] + 1
    assert "initial weights from" in (started / "train.log").read_text()
    # a checkpoint file works as well as a run folder
    again = train(data, tmp_path / "again", epochs=1, lr=1e-9,
                  init_from=str(pretrained / "checkpoints" / "best.safetensors"))  # fmt: skip
    a, b = (load_weights(r / "checkpoints" / "last.safetensors")[0] for r in (started, again))
    assert all(torch.allclose(a[name], b[name]) for name in a)


def test_another_network_is_refused_with_the_differences(make_prepared, tmp_path):
    data = make_prepared(n=32, size=16, patients=8)
    pretrained = train(data, tmp_path / "pretrained", epochs=1)
    with pytest.raises(MeddenoiseError, match=r"init_from .*another network \(base_channels: 16 there vs 8"):
        train(data, tmp_path / "other", epochs=1, base_channels=8, init_from=str(pretrained))
    with pytest.raises(MeddenoiseError, match="not found|does not exist|no checkpoint"):
        train(data, tmp_path / "missing", epochs=1, init_from=str(tmp_path / "nowhere"))
