"""Engine building blocks: schedule, EMA, losses, targets, checkpoints, runtime, torchrun environment."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from meddenoise.engine import checkpoint as ckpt
from meddenoise.engine import distributed
from meddenoise.engine.ema import WeightAverage
from meddenoise.engine.losses import build_loss, per_image_loss
from meddenoise.engine.runtime import Runtime, build_runtime, strip_wrapper_prefixes, unwrap
from meddenoise.engine.schedule import learning_rate
from meddenoise.engine.targets import (
    TrainingTarget,
    build_target,
    list_targets,
    make_target_batch,
    register_target,
)
from meddenoise.errors import ConfigError, MeddenoiseError
from meddenoise.noise import NoiseSpec


def test_schedules_start_peak_and_end_where_documented():
    def lr(step, kind, warm=0):
        return learning_rate(step, base_lr=1.0, kind=kind, total_steps=100, warmup_steps=warm)

    assert lr(0, "none") == lr(99, "none") == 1.0
    assert lr(0, "none", 10) == pytest.approx(0.1) and lr(9, "none", 10) == 1.0
    assert lr(0, "cosine") == 1.0 and lr(50, "cosine") == pytest.approx(0.5) and lr(100, "cosine") == 0.0
    assert lr(0, "onecycle") == pytest.approx(1 / 25) and lr(30, "onecycle") == pytest.approx(1.0)
    assert lr(100, "onecycle") == pytest.approx(1e-4)
    values = [lr(s, "cosine", 10) for s in range(100)]
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 9


def test_ema_moves_towards_the_weights_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, before + 0.1)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_per_image_losses_average_to_the_batch_loss():
    prediction, target = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    for name in ("l1", "l2"):
        assert per_image_loss(name, prediction, target).mean() == pytest.approx(
            float(build_loss(name)(prediction, target))
        )
    with pytest.raises(ConfigError):
        build_loss("l3")


class AddNoise:
    """A stand-in noise operator: adds a constant that depends on the seed (so copies are told apart)."""

    def __call__(self, clean, image_keys, *, seed, epoch=None, mode="fixed"):
        return clean + seed * 1e-3


def test_clean_target_trains_every_deep_supervision_head():
    class TwoHeads(nn.Module):
        def forward(self, x):
            return [x * 0, x * 2]

    clean = torch.full((2, 1, 4, 4), 0.5)
    batch = make_target_batch(
        build_target("clean", AddNoise()), clean, torch.arange(2), AddNoise(), NoiseSpec(seed=0), epoch=0
    )
    loss = build_target("clean", AddNoise()).loss(TwoHeads(), batch, build_loss("l1"))
    assert float(loss) == pytest.approx(0.5)  # heads lose 0.5 and 0.5


def test_clean_free_targets_never_receive_clean_pixels():
    received = []

    @register_target("test-clean-free")
    class Spy(TrainingTarget):
        needs_clean = False
        copies = 2

        def loss(self, model, batch, loss_fn):
            received.append(batch)
            return loss_fn(model(batch.noisy[0]), batch.noisy[1])

    target = build_target("test-clean-free", AddNoise())
    batch = make_target_batch(
        target, torch.rand(2, 1, 4, 4), torch.arange(2), AddNoise(), NoiseSpec(seed=1), epoch=0
    )
    assert batch.clean is None and len(batch.noisy) == 2
    # copy c uses seed + 7919 c
    assert torch.allclose(batch.noisy[1] - batch.noisy[0], torch.full_like(batch.noisy[0], 7.919))
    target.loss(nn.Identity(), batch, build_loss("l1"))
    assert received[0].clean is None
    assert "clean" in list_targets() and "test-clean-free" in list_targets()
    with pytest.raises(ConfigError, match="unknown training target"):
        build_target("no-such-target", AddNoise())
    with pytest.raises(ConfigError, match="unknown option"):
        build_target("clean", AddNoise(), gamma=2)


def test_gradient_clipping_bounds_the_step_of_plain_sgd():
    from meddenoise.engine.step import TrainStep
    from meddenoise.engine.targets import TargetBatch

    def step_size(grad_clip: float) -> float:
        torch.manual_seed(0)
        model = nn.Conv2d(1, 1, 3, padding=1)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        # SGD with lr 1 moves the weights by exactly the (clipped) gradient; Adam would hide the scale.
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        runtime = Runtime(torch.device("cpu"))
        step = TrainStep(
            model,
            optimizer,
            runtime,
            build_target("clean", AddNoise()),
            build_loss("l2"),
            grad_clip=grad_clip,
        )
        clean = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        step(TargetBatch([clean + 5.0], clean, torch.arange(2)), share=1.0, lr=1.0)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm())

    assert step_size(0.0) > 0.1
    assert step_size(0.01) == pytest.approx(0.01, rel=1e-4)


def test_weights_round_trip_without_wrapper_prefixes(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    wrapped = nn.DataParallel(model)
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, wrapped, {"model": "x", "epoch": 3})
    tensors, metadata = ckpt.load_weights(path)
    assert metadata == {"model": "x", "epoch": 3}
    assert set(tensors) == set(model.state_dict())
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1}) == {"a": 1}
    assert unwrap(wrapped) is model
    other = nn.Sequential(nn.Conv2d(1, 3, 3))
    with pytest.raises(MeddenoiseError, match="does not fit"):
        ckpt.load_state_into(other, tensors, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MeddenoiseError, match="not a readable"):
        ckpt.load_weights(path)


def test_training_state_loads_with_weights_only_and_restores_rng(tmp_path):
    torch.manual_seed(1)
    state = {"rng": ckpt.rng_states(), "value": torch.arange(3), "best": math.inf}
    expected = torch.rand(3)
    ckpt.save_training_state(tmp_path / "s.pt", state)
    loaded = ckpt.load_training_state(tmp_path / "s.pt")
    ckpt.restore_rng_states(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)
    assert loaded["best"] == math.inf
    with pytest.raises(MeddenoiseError, match="no training state"):
        ckpt.load_training_state(tmp_path / "missing.pt")


def test_runtime_is_a_no_op_on_cpu_without_amp():
    runtime = build_runtime(strategy="single", device="cpu", amp="auto")
    assert runtime.amp == "off" and not runtime.scaler.is_enabled()
    x = torch.ones(2)
    with runtime.autocast():
        assert (x @ x).dtype == torch.float32
    bf16 = Runtime(torch.device("cpu"), amp="bf16")
    with bf16.autocast():
        assert nn.Linear(2, 2)(x).dtype == torch.bfloat16
    assert Runtime(torch.device("cpu"), amp="fp16").scaler.is_enabled()


def test_dp_on_cpu_degenerates_to_one_device():
    runtime = build_runtime(strategy="dp", device="cpu")
    wrapped = runtime.wrap(nn.Linear(2, 1))
    assert isinstance(wrapped, nn.DataParallel) and runtime.data_parallel_width == 1
    assert wrapped(torch.ones(3, 2)).shape == (3, 1)


def test_ddp_without_torchrun_explains_what_is_missing(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(MeddenoiseError, match="LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        build_runtime(strategy="ddp", device="cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(MeddenoiseError, match="inconsistent"):
        distributed.place_from_env()


def test_torchrun_command_relaunches_this_package():
    command = distributed.torchrun_command(3, ["train", "--data", "d"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=3"]
    assert command[-5:] == ["-m", "meddenoise", "train", "--data", "d"]


def test_launched_workers_read_the_runs_config_from_the_run_folder(tmp_path, monkeypatch):
    """DDP from `train` outside torchrun: the launcher writes the config into the run folder and the workers
    read it there (no option travels through a command line); the hand-off file goes when they finish."""
    import argparse

    from meddenoise.commands.train import register
    from meddenoise.config import config_from_args, load_config
    from meddenoise.engine import launch
    from meddenoise.engine.config import TrainConfig

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(
        [
            "train",
            "--data",
            "d",
            "--out",
            str(out),
            "--noise-std",
            "0.3",
            "--lr",
            "0.002",
            "--no-noise-clamp",
            "--model-options",
            "residual=true",
            "--strategy",
            "ddp",
            "--nproc",
            "2",
        ]
    )
    config = config_from_args(TrainConfig, args)
    assert config.noise.std == 0.3 and config.noise.clamp is False
    seen = {}

    def fake_torchrun(nproc, argv, module):
        seen.update(nproc=nproc, module=module, config=load_config(TrainConfig, argv[0]))
        return 0

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(distributed, "launch_torchrun", fake_torchrun)
    said = []
    assert launch.train(config, say=said.append) == out
    assert seen == {"nproc": 2, "module": "meddenoise.worker", "config": config}
    assert said == ["launching 2 DDP worker(s) with torchrun"]
    assert not (out / "launch_config.json").exists()


def test_a_worker_prints_errors_like_the_train_command(tmp_path, capsys):
    from meddenoise import worker
    from meddenoise.config import save_config
    from meddenoise.engine.config import TrainConfig

    handoff = tmp_path / "launch_config.json"
    save_config(TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "run")), handoff)
    assert worker.main([str(handoff)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("meddenoise train: error: ") and "missing" in error


def test_train_help_lists_every_option(capsys):
    from meddenoise.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--noise-std",
        "--noise-kind",
        "--noise-clamp",
        "--noise-seed",
        "--strategy",
        "--amp",
        "--checkpoint-every",
        "--resume",
        "--nproc",
    ):
        assert flag in text


def test_config_check_validates_without_changing_values():
    from meddenoise.config import config_from_mapping, validate_config
    from meddenoise.engine.config import TrainConfig

    values = {"data": "d", "out": "o", "pipeline": "reference", "amp": "auto", "channels_last": True}
    config = config_from_mapping(TrainConfig, values)
    before = dataclasses.asdict(config)
    validate_config(config)
    assert dataclasses.asdict(config) == before and config.amp == "auto" and config.channels_last
    assert config.runtime_precision() == ("off", False)  # the reference runs like the paper's code
    fast = config_from_mapping(TrainConfig, {**values, "pipeline": "fast", "amp": "bf16"})
    assert fast.runtime_precision() == ("bf16", True)


def test_one_place_decides_when_training_stops():
    from types import SimpleNamespace

    from meddenoise.engine.train import Trainer

    def trainer(epoch=0, step=0, without=0, **config):
        options = {"epochs": 3, "max_steps": 0, "patience": 0, "time_limit": 0.0, **config}
        progress = SimpleNamespace(epoch=epoch, global_step=step, epochs_without_improvement=without)
        fake = SimpleNamespace(config=SimpleNamespace(**options), progress=progress)
        fake.outside_stop = lambda started, at_epoch_end=False: (
            "time_limit" if options["time_limit"] else None
        )
        return fake

    def stop(fake, at, earlier=None):
        if at == "start":
            return Trainer.stop_before_training(fake)
        if at == "step":
            return Trainer.stop_after_step(fake, 0.0)
        return Trainer.stop_after_epoch(fake, 0.0, earlier)

    assert stop(trainer(), "start") is None and stop(trainer(), "step") is None
    assert stop(trainer(epoch=3), "start") == "epochs" and stop(trainer(epoch=3), "epoch_end") == "epochs"
    assert stop(trainer(epoch=3), "step") is None  # the epoch count is looked at between epochs only
    assert stop(trainer(step=10, max_steps=10), "step") == "max_steps"
    assert stop(trainer(time_limit=1.0), "step") == "time_limit"
    assert stop(trainer(time_limit=1.0), "start") is None
    assert stop(trainer(without=2, patience=2), "step") is None
    assert stop(trainer(without=2, patience=2), "epoch_end", earlier="time_limit") == "early_stopping"
    assert stop(trainer(epoch=1), "epoch_end", earlier="time_limit") == "time_limit"
    terminated = trainer()
    terminated.outside_stop = lambda started, at_epoch_end=False: "terminated"  # SIGTERM received
    assert stop(terminated, "step") == "terminated" and stop(terminated, "start") is None
