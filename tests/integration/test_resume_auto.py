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
    err = capsys.readouterr().err
    assert "use resume auto to start fresh" in err and "(--resume)" in err
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


def test_a_run_whose_training_state_is_gone_is_neither_continued_nor_overwritten(
    make_prepared, tmp_path, capsys
):
    """Issue 23, row 14: --resume auto after last.state.pt was deleted once 2 epochs were recorded silently
    restarted and overwrote best.safetensors and metrics.jsonl."""
    data, out = make_prepared(n=16, size=16), tmp_path / "run"
    assert train(data, out, "--epochs", "2", "--resume", "auto") == 0
    (out / "checkpoints" / "last.state.pt").unlink()
    best = (out / "checkpoints" / "best.safetensors").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    for extra in (("--resume", "auto"), ()):
        assert train(data, out, "--epochs", "3", *extra) == 2
        err = capsys.readouterr().err
        assert "holds an earlier run's results" in err and "checkpoints/best.safetensors" in err
        assert "move the folder aside or choose another output folder (--out)" in err
    assert (out / "checkpoints" / "best.safetensors").read_bytes() == best
    assert (out / "metrics.jsonl").read_text() == metrics
