"""`RunDir` owns the run folder's layout; `ModelSpec` is the one description of a run's network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meddenoise.engine import checkpoint as ckpt
from meddenoise.errors import MeddenoiseError
from meddenoise.models import build_model
from meddenoise.models.spec import ModelSpec
from meddenoise.rundir import PER_IMAGE_COLUMNS, RunDir, read_rows, write_per_image


def test_layout_and_readers(tmp_path):
    run = RunDir(tmp_path)
    assert (
        run.metrics_file == tmp_path / "metrics.jsonl" and run.best_weights.parent == tmp_path / "checkpoints"
    )
    assert run.evaluation_dir("test") == tmp_path / "evaluation" / "test"
    assert (run.read_metrics(), run.read_summary(), run.read_config()) == ([], {}, {})
    assert not run.has_training_state()
    with pytest.raises(MeddenoiseError, match="no checkpoint"):
        run.weights_for_inference()
    run.write_metrics([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_resume_or_start_clean_keeps_a_checkpointed_run_and_removes_an_unfinished_one(tmp_path):
    unfinished = RunDir(tmp_path / "killed-before-checkpoint")
    unfinished.path.mkdir()
    (unfinished.path / "train.log").write_text("epoch 1\n")
    assert unfinished.resume_or_start_clean() is False and not unfinished.path.exists()
    assert RunDir(tmp_path / "never-started").resume_or_start_clean() is False

    resumable = RunDir(tmp_path / "checkpointed")
    resumable.checkpoints.mkdir(parents=True)
    resumable.last_state.write_bytes(b"state")
    assert resumable.resume_or_start_clean() is True and resumable.last_state.is_file()


def test_reproduction_folder_layout_and_readers(tmp_path):
    from meddenoise.reprodir import ReproDir, write_privacy_audit

    layout = ReproDir(tmp_path)
    assert (layout.read_plan(), layout.read_privacy_audit(), layout.read_privacy_modes()) == ({}, None, None)
    assert layout.plan_file == tmp_path / "reproduce.json" and layout.run_dir("a") == tmp_path / "runs" / "a"
    layout.privacy_dir.mkdir()
    written = write_privacy_audit(layout.privacy_dir, {"levels": []}, "# audit\n")
    assert written == (layout.privacy_audit_file, layout.privacy_dir / "privacy_audit.md")
    assert layout.read_privacy_audit() == {"levels": []}
    layout.modes_dir.mkdir()
    layout.modes_file.write_text("{not json")
    assert layout.read_privacy_modes() is None  # an unreadable table is left out of the report


def test_runs_that_counted_epochs_from_zero_are_renumbered(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == [1, 2]


def test_per_image_tables_have_one_schema(tmp_path):
    write_per_image(tmp_path / "t.csv", [{"image_id": "a", "psnr": 30.5, "lpips": None}])
    (row,) = read_rows(tmp_path / "t.csv")
    assert tuple(row) == PER_IMAGE_COLUMNS and row["psnr"] == "30.5" and row["lpips"] == ""


def test_model_spec_builds_through_the_registry_and_round_trips():
    spec = ModelSpec("unetpp", base_channels=4, depth=3, norm="group", deep_supervision=False)
    torch.manual_seed(0)
    model = spec.build()
    torch.manual_seed(0)
    same = build_model("unetpp", base_channels=4, depth=3, norm="group", deep_supervision=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    dncnn = ModelSpec("dncnn", base_channels=4, options={"num_layers": 3})
    # DnCNN has no depth or deep supervision: left at their defaults, those are left out
    assert dncnn.build_options() == {"base_channels": 4, "norm": "batch", "num_layers": 3}


@pytest.mark.parametrize(
    ("name", "field", "value"), [("dncnn", "depth", 3), ("unet", "deep_supervision", False)]
)
def test_model_spec_refuses_a_setting_the_model_does_not_take(name, field, value):
    from meddenoise.errors import ConfigError

    spec = ModelSpec(name, base_channels=4, **{field: value})
    with pytest.raises(ConfigError, match=f"model '{name}' has no option {field}") as caught:
        spec.build()
    assert caught.value.parameter == field and "its options are: base_channels" in str(caught.value)
    with pytest.raises(ConfigError, match="has no option"):
        spec.check_input_size(16, 16)


def test_a_checkpoint_that_stored_an_ignored_setting_still_loads():
    stored = ModelSpec("dncnn", base_channels=4, depth=3, options={"num_layers": 3}).to_dict()
    spec = ModelSpec.from_metadata({"model": "dncnn", "model_spec": stored})
    assert spec.depth == 0 and spec.build_options() == {"base_channels": 4, "norm": "batch", "num_layers": 3}


def test_checkpoints_store_the_spec_and_old_ones_still_load(tmp_path):
    spec = ModelSpec("unet", base_channels=4, depth=3, norm="group")
    model = spec.build()
    metadata = {"model": "unet", "model_spec": spec.to_dict(), "epoch": 2, "epochs_from": 1}
    ckpt.save_weights(tmp_path / "new.safetensors", model, metadata)
    loaded, meta = ckpt.load_trained_model(tmp_path / "new.safetensors")
    assert meta.epoch == 2 and meta.model_spec == spec
    # written before ModelSpec: the resolved build_model options, epochs counted from 0
    old = {"model": "unet", "model_options": spec.build_options(), "epoch": 1}
    ckpt.save_weights(tmp_path / "old.safetensors", model, old)
    loaded_old, meta_old = ckpt.load_trained_model(tmp_path / "old.safetensors")
    assert meta_old.epoch == 2 and meta_old.model_spec == spec
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), loaded_old(x))
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


def test_a_recorded_relative_data_folder_is_found_from_another_directory(tmp_path):
    from meddenoise.rundir import recorded_folder

    project = tmp_path / "project"
    (project / "prepared" / "p").mkdir(parents=True)
    run = project / "runs" / "r"
    run.mkdir(parents=True)
    # an older run trained in `project` with --data prepared/p --out runs/r, read from elsewhere
    assert recorded_folder("prepared/p", run, "runs/r") == project / "prepared" / "p"
    checkpoint = run / "checkpoints" / "best.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    assert recorded_folder("prepared/p", checkpoint, "runs/r") == project / "prepared" / "p"
    assert recorded_folder(str(project / "prepared" / "p"), run, "runs/r") == project / "prepared" / "p"
    # out not a suffix of where the run is now: the path as recorded
    assert recorded_folder("prepared/p", run, "elsewhere/r") == Path("prepared/p")


def test_a_run_records_its_data_folder_as_an_absolute_path(make_prepared, tiny_fit, tmp_path, monkeypatch):
    data = make_prepared(n=16, size=16, patients=8)
    monkeypatch.chdir(data.parent)
    run = tiny_fit(Path(data.name), tmp_path / "run", epochs=1)
    recorded = json.loads((run / "config.json").read_text())["config"]["data"]
    assert Path(recorded).is_absolute() and Path(recorded) == data.resolve()


def test_a_run_that_does_not_beat_its_noisy_input_says_so(make_prepared, tmp_path, capsys):
    import csv

    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit

    data = make_prepared(n=16, size=16, patients=8)
    options = {"data": str(data), "out": str(tmp_path / "run"), "model": "dncnn", "base_channels": 8,
               "model_options": ["num_layers=3"], "norm": "group", "epochs": 1, "batch_size": 8,
               "lr": 1e-7, "device": "cpu", "quiet": True, "evaluate_test": False}  # fmt: skip
    run = fit(config_from_mapping(TrainConfig, options))  # a learning rate far too small to learn anything
    with open(run / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["best_val_psnr"]) <= float(row["noisy_val_psnr"]) + 0.5
    assert "did not learn to denoise" in row["learning_warning"]
    assert "did not learn to denoise" in capsys.readouterr().err  # shown under --quiet too
    assert "did not learn to denoise" in (run / "train.log").read_text()


def test_the_learning_warning_depends_on_the_margin_over_the_noisy_input():
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.run_files import learning_warning

    config = TrainConfig(data="d", out="o")
    assert learning_warning(25.0, 14.0, config) == ""
    assert "did not learn" in learning_warning(9.09, 14.0, config)
    assert "did not learn" in learning_warning(14.3, 14.0, config)
    assert learning_warning(None, 14.0, config) == ""


def test_on_a_cpu_a_long_run_says_its_measured_pace_after_the_first_steps(
    make_prepared, tmp_path, monkeypatch
):
    from meddenoise.config import config_from_mapping
    from meddenoise.engine import train
    from meddenoise.engine.config import TrainConfig

    monkeypatch.setattr(train, "PACE_STEPS", 2)
    monkeypatch.setattr(train, "PACE_NOTE_SECONDS", 0.0)  # any run counts as long here
    data = make_prepared(n=24, size=16, patients=12)
    options = {"data": str(data), "out": str(tmp_path / "run"), "model": "dncnn", "base_channels": 4,
               "model_options": ["num_layers=3"], "norm": "group", "epochs": 2, "batch_size": 2,
               "device": "cpu", "quiet": True, "evaluate_test": False}  # fmt: skip
    run = train.fit(config_from_mapping(TrainConfig, options))
    log = (run / "train.log").read_text()
    assert log.count("pace on this CPU: ") == 1 and "s per step, so the remaining " in log
    monkeypatch.setattr(train, "PACE_NOTE_SECONDS", 1e9)  # a short run stays quiet
    run = train.fit(config_from_mapping(TrainConfig, {**options, "out": str(tmp_path / "short")}))
    assert "pace on this CPU" not in (run / "train.log").read_text()


def test_recipe_small_fills_only_the_options_left_at_the_paper_defaults():
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig

    base = {"data": "d", "out": "o"}
    paper = config_from_mapping(TrainConfig, base).with_recipe()
    assert (paper.lr, paper.lr_schedule, paper.batch_size) == (1e-3, "none", 16)
    small = config_from_mapping(TrainConfig, {**base, "recipe": "small"}).with_recipe()
    assert (small.lr, small.lr_schedule, small.batch_size) == (5e-3, "onecycle", 8)
    given = config_from_mapping(TrainConfig, {**base, "recipe": "small", "lr": 2e-3}).with_recipe()
    assert (given.lr, given.lr_schedule, given.batch_size) == (2e-3, "onecycle", 8)  # explicit value kept


def test_a_small_recipe_run_records_the_values_it_trained_with(make_prepared, tmp_path):
    import json

    from meddenoise.cli import main

    data = make_prepared(n=16, size=16, patients=8)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "dncnn",
            "--base-channels", "4", "--model-options", "num_layers=3", "--epochs", "1", "--recipe", "small",
            "--quiet", "--device", "cpu", "--no-evaluate-test"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (saved["recipe"], saved["lr"], saved["lr_schedule"], saved["batch_size"]) == (
        "small",
        5e-3,
        "onecycle",
        8,
    )
