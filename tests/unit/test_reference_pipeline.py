"""The reference (seed-code) pipeline: the same noisy pairs, batches and fp32 losses as the fast path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddenoise.data.cache import load_prepared
from meddenoise.data.loader import DeviceBatches
from meddenoise.engine.losses import build_loss
from meddenoise.engine.reference import (
    ReferenceBatches,
    ReferenceValidation,
    build_host_dataset,
    per_image_skimage_scores,
)
from meddenoise.engine.runtime import build_runtime
from meddenoise.engine.step import TrainStep, build_optimizer
from meddenoise.engine.targets import TargetBatch, build_target, make_target_batch
from meddenoise.engine.validation import evaluate_batches, reduce_means
from meddenoise.models import build_model
from meddenoise.noise import NoiseSpec, build_noise

NOISE_SEED = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import write_tiny_prepared

    return load_prepared(write_tiny_prepared(tmp_path_factory.mktemp("prepared"), n=40, size=32))


@pytest.fixture(scope="module")
def noise_op():
    return build_noise("gaussian", mean=0.1, std=0.2)


def test_host_dataset_holds_the_noisy_images_the_fast_path_makes_on_the_device(prepared, noise_op):
    dataset = build_host_dataset(prepared, "train", noise_op, noise_seed=NOISE_SEED)
    fast = DeviceBatches.from_prepared(prepared, "train", "cpu", 5, shuffle=False)
    assert len(dataset) == len(fast) > 0
    for batch in fast.shard():
        noisy = noise_op(batch.clean, batch.image_keys, seed=NOISE_SEED, mode="fixed")
        assert torch.equal(dataset.noisy[batch.positions], noisy)
        assert torch.equal(dataset.clean[batch.positions], batch.clean)
        assert torch.equal(dataset.image_keys[batch.positions], batch.image_keys)
    assert dataset.noisy.dtype == dataset.clean.dtype == torch.float32
    assert not torch.equal(dataset.noisy, dataset.clean)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batch_plan_matches_the_device_batches_on_every_rank(prepared, noise_op, world_size):
    dataset = build_host_dataset(prepared, "train", noise_op, noise_seed=NOISE_SEED)
    for rank in range(world_size):
        options = dict(rank=rank, world_size=world_size, seed=7)
        fast = DeviceBatches.from_prepared(prepared, "train", "cpu", 3, **options)
        reference = ReferenceBatches(dataset, 3, "cpu", workers=0, **options)
        assert reference.steps_per_epoch() == fast.steps_per_epoch()
        for epoch, start_step in ((0, 0), (1, 0), (1, 2)):
            fast_steps = [(b.positions.tolist(), b.global_size) for b in fast.epoch(epoch, start_step)]
            reference_batches = list(reference.epoch(epoch, start_step))
            assert [(b.positions.tolist(), b.global_size) for b in reference_batches] == fast_steps
            assert reference.plan(epoch, start_step) == fast_steps
            for batch in reference_batches:
                assert torch.equal(batch.noisy, dataset.noisy[batch.positions])


def _train_losses(prepared, noise_op, pipeline: str, epochs: int = 2, workers: int = 1) -> tuple[list, dict]:
    """Per-step losses of the engine's step on CPU in fp32, fed by one pipeline (train.py's loop body)."""
    runtime = build_runtime(strategy="single", device="cpu", amp="off")
    torch.manual_seed(0)
    model = runtime.place(build_model("unet", base_channels=8, depth=3, norm="batch"))
    optimizer = build_optimizer(model, "adam", 1e-3, 0.0, runtime.device)
    target = build_target("clean", noise_op, seed=0)
    step = TrainStep(runtime.wrap(model), optimizer, runtime, target, build_loss("l1"))
    if pipeline == "fast":
        batches = DeviceBatches.from_prepared(prepared, "train", runtime.device, 4, seed=5)
    else:
        dataset = build_host_dataset(prepared, "train", noise_op, noise_seed=NOISE_SEED)
        batches = ReferenceBatches(dataset, 4, runtime.device, workers=workers, seed=5)
    losses = []
    for epoch in range(epochs):
        model.train()
        for batch in batches.epoch(epoch):
            if pipeline == "fast":
                target_batch = make_target_batch(
                    target,
                    batch.clean,
                    batch.image_keys,
                    noise_op,
                    NoiseSpec(seed=NOISE_SEED),
                    epoch=epoch,
                )
                losses.append(step(target_batch, 1.0, 1e-3))
            else:
                target_batch = TargetBatch([batch.noisy], batch.clean, batch.image_keys)
                losses.append(step(target_batch, 1.0, 1e-3).item())
    return [float(loss) for loss in losses], model.state_dict()


def test_fast_and_reference_pipelines_give_the_same_loss_trajectory_in_fp32(prepared, noise_op):
    fast_losses, fast_weights = _train_losses(prepared, noise_op, "fast")
    reference_losses, reference_weights = _train_losses(prepared, noise_op, "reference", workers=1)
    assert len(fast_losses) == len(reference_losses) >= 6
    assert np.allclose(fast_losses, reference_losses, rtol=0, atol=1e-5), (fast_losses, reference_losses)
    assert fast_losses[-1] < fast_losses[0]  # it trained, so equal trajectories are not equal constants
    for name, value in fast_weights.items():
        assert torch.allclose(value.float(), reference_weights[name].float(), atol=1e-5), name


def test_reference_validation_scores_like_the_device_validation(prepared, noise_op):
    runtime = build_runtime(strategy="single", device="cpu", amp="off")
    torch.manual_seed(1)
    model = build_model("unet", base_channels=8, depth=3)
    fast = DeviceBatches.from_prepared(prepared, "val", runtime.device, 4, shuffle=False)
    expected = reduce_means(evaluate_batches(model, fast, noise_op, runtime, noise_seed=NOISE_SEED))
    dataset = build_host_dataset(prepared, "val", noise_op, noise_seed=NOISE_SEED)
    measured = ReferenceValidation(dataset, 4, runtime, workers=0)(model)
    assert measured["images"] == expected["images"] == len(dataset)
    assert measured["loss"] == pytest.approx(expected["loss"], abs=1e-7)
    assert measured["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)
    assert measured["ssim"] == pytest.approx(expected["ssim"], abs=1e-5)


def test_skimage_scores_of_identical_and_different_images():
    rng = np.random.default_rng(0)
    clean = rng.random((2, 1, 16, 16), dtype=np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape).astype(np.float32), 0, 1)
    psnr_values, ssim_values = per_image_skimage_scores(np.stack([clean[0], noisy[1]]), clean)
    assert psnr_values[0] == np.inf and ssim_values[0] == pytest.approx(1.0)
    assert 10 < psnr_values[1] < 30 and 0 < ssim_values[1] < 1


def test_reference_batches_reject_bad_settings(prepared, noise_op):
    dataset = build_host_dataset(prepared, "train", noise_op, noise_seed=0, limit=4)
    assert len(dataset) == 4
    with pytest.raises(ValueError):
        ReferenceBatches(dataset, 0, "cpu")
    with pytest.raises(ValueError):
        ReferenceBatches(dataset, 2, "cpu", workers=-1)


def _fit_records(folder, out, pipeline: str, *extra: str) -> list[dict]:
    from meddenoise.cli import main

    argv = ["train", "--data", str(folder), "--out", str(out), "--model", "unet", "--base-channels", "8",
            "--depth", "3", "--batch-size", "4", "--epochs", "2", "--seed", "2", "--noise-seed", "3",
            "--quiet", "--no-evaluate-test", "--pipeline", pipeline, "--loader-workers", "1",
            *extra]  # fmt: skip
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_with_pipeline_reference_matches_the_fast_path_epoch_by_epoch(prepared, tmp_path):
    fast = _fit_records(prepared.folder, tmp_path / "fast", "fast")
    reference = _fit_records(prepared.folder, tmp_path / "reference", "reference")
    assert len(fast) == len(reference) == 2
    for ours, theirs in zip(fast, reference):
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], abs=1e-5)
        assert theirs["val_loss"] == pytest.approx(ours["val_loss"], abs=1e-5)
        assert theirs["val_psnr"] == pytest.approx(ours["val_psnr"], abs=1e-3)
        assert theirs["val_ssim"] == pytest.approx(ours["val_ssim"], abs=1e-4)
        assert theirs["train_images"] == ours["train_images"] and theirs["train_images_each_once"]
    assert fast[-1]["train_loss"] < fast[0]["train_loss"]
    saved = json.loads((tmp_path / "reference" / "config.json").read_text())["config"]
    assert saved["pipeline"] == "reference" and saved["amp"] == "auto"  # the options as given, unchanged
    summary = (tmp_path / "reference" / "summary.csv").read_text().splitlines()
    assert dict(zip(summary[0].split(","), summary[1].split(",")))["amp"] == "off"  # what the runtime used
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig

    config = config_from_mapping(TrainConfig, {**saved, "pipeline": "reference"})
    assert config.runtime_precision() == ("off", False) and config.amp == "auto" and config.channels_last


@pytest.mark.parametrize(
    "options, message, flag",
    [(["--amp", "bf16"], "fp16", "--amp"), (["--compile"], "compile", "--compile"),
     (["--noise-mode", "fresh"], "noise.mode fixed", "--noise-mode"),
     (["--target", "noise2noise"], "target clean", "--target")],
)  # fmt: skip
def test_reference_pipeline_refuses_what_the_seed_code_never_did(
    prepared, tmp_path, capsys, options, message, flag
):
    from meddenoise.cli import main

    argv = [
        "train",
        "--data",
        str(prepared.folder),
        "--out",
        str(tmp_path / "run"),
        "--pipeline",
        "reference",
    ]
    assert main([*argv, *options]) == 2
    error = capsys.readouterr().err
    assert "reference pipeline" in error and message in error and "Traceback" not in error
    assert error.rstrip().endswith(f"({flag})")  # the CLI names the flag of the parameter at fault
