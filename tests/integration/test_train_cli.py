"""`meddenoise train` end to end on tiny prepared folders (CPU): outputs, quality, precision, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from meddenoise.cli import main
from meddenoise.config import config_from_mapping
from meddenoise.engine.checkpoint import load_trained_model, load_training_state, load_weights
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.targets import TrainingTarget, register_target
from meddenoise.engine.train import fit
from meddenoise.errors import MeddenoiseError
from meddenoise.rundir import PER_IMAGE_COLUMNS

TINY = ["--model", "unet", "--base-channels", "8", "--depth", "3", "--quiet"]


def tiny_config(data, out, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), base_channels=8, depth=3, batch_size=4, epochs=1, quiet=True)
    return config_from_mapping(TrainConfig, {**values, **overrides})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path_factory.mktemp("prepared"), n=48, size=32)
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
        "--noise-std",
        "0.2",
        "--epochs",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
    ]
    assert main(argv) == 0
    return data, out


def test_training_beats_the_noisy_input_and_writes_the_run_folder(trained_run):
    data, out = trained_run
    for name in ("config.json", "split.csv", "metrics.jsonl", "summary.csv", "train.log", "test_metrics.csv"):
        assert (out / name).is_file(), name
    for name in ("last.safetensors", "last.state.pt", "best.safetensors"):
        assert (out / "checkpoints" / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 7))  # from 1, as the console counts
    assert "epoch 6/6" in (out / "train.log").read_text()
    last = records[-1]
    assert last["val_psnr"] > last["noisy_val_psnr"] + 3, (last["val_psnr"], last["noisy_val_psnr"])
    assert all(r["train_images_each_once"] for r in records)
    for key in (
        "train_loss",
        "val_loss",
        "val_ssim",
        "train_seconds",
        "val_seconds",
        "images_per_second",
        "peak_memory_mb",
        "lr",
        "cpu_seconds",
        "load_average",
    ):
        assert key in last
    # what a timing comparison needs to judge itself: CPU time beside wall time, and the machine's load
    row = summary(out)
    assert float(row["cpu_seconds"]) > 0 and float(row["load_average_start"]) >= 0
    assert "load_average_end" in row
    log = (out / "train.log").read_text()
    assert "noisy input on val" in log and "val PSNR" in log


def test_test_metrics_and_the_trained_model_can_be_reloaded(trained_run):
    data, out = trained_run
    with open(out / "test_metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and tuple(rows[0]) == PER_IMAGE_COLUMNS  # the same schema as `meddenoise evaluate`
    assert all(float(r["psnr"]) > 0 and float(r["noisy_psnr"]) > 0 and r["split"] == "test" for r in rows)
    model, metadata = load_trained_model(out)
    assert metadata.model_name == "unet" and metadata.noise.std == 0.2 and not model.training
    best_epoch = metadata.epoch
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert best_epoch == min(records, key=lambda r: r["val_loss"])["epoch"]
    with torch.no_grad():
        assert model(torch.rand(1, 1, 20, 24)).shape == (1, 1, 20, 24)


def test_an_existing_run_needs_resume_and_the_same_model(trained_run, capsys):
    data, out = trained_run
    argv = ["train", "--data", str(data), "--out", str(out), *TINY, "--noise-std", "0.2", "--batch-size", "2"]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    other = [*argv, "--resume", "--base-channels", "16"]
    assert main(other) == 2
    assert "base_channels" in capsys.readouterr().err


def test_missing_prepared_folder_is_a_clean_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err


@register_target("test-poisoned")
class PoisonedTarget(TrainingTarget):
    """The clean target whose loss turns NaN from step 5 on (counts calls)."""

    def __init__(self, noise_op, *, seed=0):
        super().__init__(noise_op)
        self.calls = 0

    def loss(self, model, batch, loss_fn):
        self.calls += 1
        loss = loss_fn(model(batch.noisy[0]), batch.clean)
        return loss * float("nan") if self.calls > 5 else loss


def test_nan_loss_stops_cleanly_naming_the_step_and_keeps_the_last_good_checkpoint(make_prepared, tmp_path):
    config = tiny_config(
        make_prepared(n=24), tmp_path / "run", target="test-poisoned", epochs=3, checkpoint_every=2
    )
    with pytest.raises(MeddenoiseError, match=r"NaN or infinite at step 5 .*last good checkpoint"):
        fit(config)
    tensors, metadata = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert metadata["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(make_prepared, tmp_path, amp):
    try:
        with torch.autocast("cpu", dtype=torch.float16 if amp == "fp16" else torch.bfloat16):
            torch.nn.Conv2d(1, 1, 3)(torch.rand(1, 1, 8, 8))
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"CPU autocast {amp} unsupported here: {exc}")
    out = fit(
        tiny_config(
            make_prepared(n=16), tmp_path / "run", amp=amp, epochs=3, max_steps=3, evaluate_test=False
        )
    )
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["global_step"] == 3 and record["val_loss"] == record["val_loss"]  # finite, not NaN
    metadata = load_weights(out / "checkpoints" / "last.safetensors")[1]
    assert metadata["config"]["amp"] == amp
    scaler = load_training_state(out / "checkpoints" / "last.state.pt")["scaler"]
    # fp16 trains through a live gradient scaler (saved for --resume); bf16 needs none
    assert bool(scaler) == (amp == "fp16")
    if scaler:
        assert scaler["scale"] > 0


def test_dataparallel_strategy_runs_on_cpu(make_prepared, tmp_path):
    out = fit(tiny_config(make_prepared(n=16), tmp_path / "run", strategy="dp", evaluate_test=False))
    with open(out / "summary.csv") as handle:
        summary = next(csv.DictReader(handle))
    assert summary["strategy"] == "dp" and summary["devices"] == "1"


def test_ema_and_schedule_options_train(make_prepared, tmp_path):
    out = fit(
        tiny_config(
            make_prepared(n=16),
            tmp_path / "run",
            ema_decay=0.9,
            lr_schedule="onecycle",
            grad_clip=1.0,
            model="unetpp",
            evaluate_test=False,
        )
    )
    metadata = load_weights(out / "checkpoints" / "best.safetensors")[1]
    assert metadata["weights"] == "ema" and metadata["model_options"]["deep_supervision"] is True


def test_out_of_memory_suggests_a_smaller_batch(make_prepared, tmp_path, monkeypatch):
    from meddenoise.engine.step import TrainStep

    def exhausted(self, batch, share, lr):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainStep, "__call__", exhausted)
    with pytest.raises(MeddenoiseError, match=r"out of memory with batch_size 4 .*batch_size 2") as caught:
        fit(tiny_config(make_prepared(n=16), tmp_path / "run"))
    assert caught.value.parameter == "batch_size"


def summary(out) -> dict:
    with open(out / "summary.csv") as handle:
        return next(csv.DictReader(handle))


def test_early_stopping_ends_a_run_whose_validation_loss_stops_falling(make_prepared, tmp_path):
    # An lr far below float32 resolution leaves GroupNorm weights unchanged: the validation loss is flat.
    config = tiny_config(
        make_prepared(n=16),
        tmp_path / "run",
        lr=1e-30,
        norm="group",
        epochs=6,
        patience=2,
        evaluate_test=False,
    )
    out = fit(config)
    row = summary(out)
    assert row["stop_reason"] == "early_stopping" and row["epochs_run"] == "3" and row["best_epoch"] == "1"
    assert "early stopping: no lower validation loss for 2 epochs" in (out / "train.log").read_text()


def test_time_limit_stops_mid_epoch_and_records_the_partial_epoch(make_prepared, tmp_path):
    out = fit(
        tiny_config(make_prepared(n=24), tmp_path / "run", time_limit=1e-9, epochs=3, evaluate_test=False)
    )
    assert summary(out)["stop_reason"] == "time_limit"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["partial_epoch"] and records[0]["global_step"] == 1
    state = load_training_state(out / "checkpoints" / "last.state.pt")
    assert state["progress"]["step_in_epoch"] == 1  # a --resume continues inside the epoch


def test_out_of_memory_while_placing_the_data_suggests_smaller_inputs(make_prepared, tmp_path, monkeypatch):
    from meddenoise.data.loader import DeviceBatches

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DeviceBatches, "from_prepared", exhausted)
    with pytest.raises(MeddenoiseError, match=r"out of memory while placing .*limit_train"):
        fit(tiny_config(make_prepared(n=16), tmp_path / "run"))
