"""`--resume auto` (torchrun restarts, SLURM requeue): start fresh in an empty run folder, continue one that
holds a checkpoint; `--resume` / `--resume yes` and no flag keep their strict meanings."""

from __future__ import annotations

import json

import pytest

from meddenoise.cli import main
from meddenoise.config import config_from_mapping
from meddenoise.engine.config import TrainConfig

TINY = ["--model", "dncnn", "--base-channels", "8", "--model-options", "num_layers=3", "--norm", "group"]
TINY += ["--batch-size", "4", "--quiet", "--no-evaluate-test", "--device", "cpu", "--patience", "0"]


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


def epochs_recorded(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_auto_starts_fresh_then_continues(make_prepared, tmp_path, capsys):
    data, out = make_prepared(n=16, size=16), tmp_path / "run"
    assert train(data, out, "--epochs", "1", "--resume", "auto") == 0
    assert "resumed from" not in capsys.readouterr().out
    assert epochs_recorded(out) == [1]
    # A requeued job relaunches the same command (here with a later end): it continues where it stopped.
    assert train(data, out, "--epochs", "2", "--resume", "auto") == 0
    assert "resumed from" in capsys.readouterr().out
    assert epochs_recorded(out) == [1, 2]
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["resume"] == "auto"


def test_strict_resume_spellings_keep_their_meaning(make_prepared, tmp_path, capsys):
    data, out = make_prepared(n=16, size=16), tmp_path / "run"
    assert train(data, out, "--epochs", "1", "--resume") == 2
    assert "--resume auto" in capsys.readouterr().err
    assert train(data, out, "--epochs", "1") == 0
    assert train(data, out, "--epochs", "1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train(data, out, "--epochs", "2", "--resume", "yes") == 0
    assert epochs_recorded(out) == [1, 2]


@pytest.mark.parametrize(
    ("given", "expected"), [(True, "yes"), (False, "no"), ("true", "yes"), ("auto", "auto"), ("no", "no")]
)
def test_saved_boolean_resume_values_still_load(given, expected):
    config = config_from_mapping(TrainConfig, {"data": "d", "out": "o", "resume": given})
    assert config.resume == expected
