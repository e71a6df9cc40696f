"""DP-SGD pieces: option checks, module validator, Poisson unit sampling, per-unit gradients, accounting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from meddenoise.engine import private
from meddenoise.engine.config import TrainConfig
from meddenoise.errors import ConfigError


def config(**changes) -> TrainConfig:
    base = TrainConfig(data="d", out="o", norm="group", dp_epsilon=8.0, dp_delta=1e-3)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"dp_noise_multiplier": 1.0}, "dp_noise_multiplier"),
        ({"amp": "fp16"}, "amp"),
        ({"grad_clip": 1.0}, "grad_clip"),
        ({"strategy": "dp"}, "strategy"),
        ({"dp_delta": 0.0}, "dp_delta"),
        ({"dp_max_grad_norm": 0.0}, "dp_max_grad_norm"),
    ],
)
def test_option_combinations_dp_sgd_cannot_honour_are_named(changes, named):
    with pytest.raises(ConfigError) as caught:
        config(**changes).check()
    assert caught.value.parameter == named


def test_batchnorm_models_are_refused_with_the_flag_to_use():
    from meddenoise.models import build_model

    with pytest.raises(ConfigError, match="norm=group"):
        private.prepare_model(build_model("unet", base_channels=4, depth=2, norm="batch"))
    model = private.prepare_model(build_model("unet", base_channels=4, depth=2, norm="group"))
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def batches(units, rate=0.4, rank=0, world=1, seed=3):
    images = torch.arange(len(units), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    keys = torch.arange(len(units), dtype=torch.int64)
    return private.PoissonUnitBatches(
        images, keys, np.asarray(units), 255, rate, rank=rank, world_size=world, seed=seed
    )


def test_poisson_batches_bring_whole_units_and_ranks_split_the_same_draw():
    units = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6]
    single = list(batches(units).epoch(1))
    assert len(single) == batches(units).steps_per_epoch() == 2  # round(1 / 0.4)
    sizes = []
    for batch in single:
        chosen = {units[int(p)] for p in batch.positions}
        # every image of a sampled unit is in the batch
        assert sorted(int(p) for p in batch.positions) == [i for i, u in enumerate(units) if u in chosen]
        sizes.append(len(batch.positions))
    ranks = [list(batches(units, rank=r, world=2).epoch(1)) for r in (0, 1)]
    for step, batch in enumerate(single):
        merged = sorted(int(p) for r in (0, 1) for p in ranks[r][step].positions)
        assert merged == sorted(int(p) for p in batch.positions)
        assert not {units[int(p)] for p in ranks[0][step].positions} & {
            units[int(p)] for p in ranks[1][step].positions
        }
    # the draw is a function of (seed, epoch, step): a replay gives the same batches, another epoch differs
    again = list(batches(units).epoch(1, start_step=1))
    assert torch.equal(again[0].positions, single[1].positions)
    draws = [tuple(batches(units).sampled_units(e, 0)) for e in range(20)]
    assert len(set(draws)) > 5


def test_per_unit_gradients_are_the_sums_of_their_images_gradients():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    model = GradSampleModule(plain, loss_reduction="mean")
    images = torch.rand(5, 1, 6, 6)
    target = torch.rand(5, 1, 6, 6)
    trainer = private.PrivateTraining(config(dp_unit="patient"), runtime=None)
    trainer.batches = batches([0, 0, 1, 2, 2])
    trainer.batches.current_units = torch.tensor([0, 0, 1, 2, 2])
    trainer.batches.current_count = 3
    loss = nn.functional.l1_loss(model(images), target)
    loss.backward()
    trainer.before_step(plain)
    weight = plain[0].weight
    grouped = weight.grad_sample.clone()
    assert grouped.shape[0] == 3
    model.disable_hooks()
    for unit, members in enumerate(([0, 1], [2], [3, 4])):
        unit_loss = sum(nn.functional.l1_loss(plain(images[i : i + 1]), target[i : i + 1]) for i in members)
        (expected,) = torch.autograd.grad(unit_loss, weight)
        torch.testing.assert_close(grouped[unit], expected, atol=1e-5, rtol=1e-4)


def test_the_noise_for_a_target_epsilon_spends_that_budget_over_the_planned_steps():
    plan = private.plan_privacy(config(epochs=4, batch_size=8), train_images=96, units=96, world_size=1)
    assert plan.sample_rate == pytest.approx(8 / 96)
    assert plan.steps == 4 * 12
    assert private.epsilon_spent(plan, plan.steps) == pytest.approx(8.0, rel=0.02)
    spent = [private.epsilon_spent(plan, s) for s in (0, 12, 24, 48)]
    assert spent[0] == 0.0 and spent == sorted(spent) and spent[1] < spent[3]
    stricter = private.plan_privacy(config(epochs=4, batch_size=8, dp_epsilon=1.0), 96, 96, 1)
    assert stricter.noise_multiplier > plan.noise_multiplier


def test_units_follow_the_split_grouping_or_each_image():
    records = [{"group": g, "patient_id": "p"} for g in ("b", "a", "b", "c")]
    rows = np.array([0, 1, 2, 3])
    assert private.unit_indices(records, rows, "patient").tolist() == [1, 0, 1, 2]
    assert private.unit_indices(records, rows, "image").tolist() == [0, 1, 2, 3]


def test_a_resumed_run_goes_on_counting_the_privacy_spent(make_prepared, tmp_path):
    """The accountant counts the noisy steps actually taken and is saved with the training state: a run
    stopped after 3 steps and resumed to 6 has spent what an uninterrupted 6-step run spends, which is the
    RDP analysis of (noise multiplier, q, 6 steps)."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.train import fit

    data = make_prepared(n=32, size=16, patients=8, seed=3)
    common = {
        "data": str(data),
        "model": "dncnn",
        "base_channels": 4,
        "model_options": ["num_layers=3"],
        "norm": "group",
        "epochs": 2,
        "batch_size": 8,
        "device": "cpu",
        "quiet": True,
        "evaluate_test": False,
        "dp_noise_multiplier": 1.5,
        "dp_delta": 1e-3,
    }

    def summary(out):
        import csv

        with open(out / "summary.csv", newline="") as handle:
            return next(csv.DictReader(handle))

    whole = fit(config_from_mapping(TrainConfig, {**common, "out": str(tmp_path / "whole")}))
    parted = tmp_path / "parted"
    fit(config_from_mapping(TrainConfig, {**common, "out": str(parted), "max_steps": 3}))
    fit(config_from_mapping(TrainConfig, {**common, "out": str(parted), "resume": "yes"}))
    row, reference = summary(parted), summary(whole)
    steps = int(reference["global_steps"])
    assert int(row["global_steps"]) == steps and steps > 3
    plan = private.PrivacyPlan("patient", 8, float(row["dp_sample_rate"]), steps, 1.5, 1.0, 1e-3, None)
    assert float(row["dp_epsilon"]) == pytest.approx(private.epsilon_spent(plan, steps), rel=1e-9)
    assert float(row["dp_epsilon"]) == pytest.approx(float(reference["dp_epsilon"]), rel=1e-9)


def test_the_loop_never_asks_whether_it_trains_privately():
    """DP-SGD is a setup (engine/setup.py chooses it once); the loop and the step hold no DP branch."""
    from pathlib import Path

    import meddenoise.engine as engine

    folder = Path(engine.__file__).parent
    for name in ("train.py", "step.py", "loop.py", "pipelines.py"):
        text = (folder / name).read_text(encoding="utf-8")
        assert "private" not in text, name
    setup = (folder / "setup.py").read_text(encoding="utf-8")
    assert setup.count("private.enabled(") == 1


def test_augmented_views_shift_and_scale_each_copy_but_never_mirror():
    generator = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 1, 32, 32)
    image[..., 4:12, 2:10] = 1.0  # a bright block near the left edge
    views = private.augmented_views(image, 6, generator)
    assert views.shape == (6, 1, 32, 32) and float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert len({tuple(v.flatten().tolist()) for v in views}) == 6  # every view differs
    columns = views[:, 0].sum(dim=1)  # brightness per column
    for view in columns:
        bright = torch.nonzero(view > view.mean()).flatten()
        # shifted by at most 2 pixels, never mirrored: the block stays at columns 2..9, give or take 2
        assert int(bright.min()) >= 0 and int(bright.max()) <= 11, view


def test_views_stay_with_their_unit_and_replay_identically():
    units = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6]

    def draw():
        source = batches(units)
        source.views = 3
        out = []
        for batch in source.epoch(2):
            out.append((batch, source.current_units.clone(), source.current_count))
        return out

    first, again = draw(), draw()
    for (batch, unit_of_row, count), (replay, replay_units, _) in zip(first, again):
        images = len(batch.positions)
        assert batch.clean.shape[0] == 3 * images and batch.image_keys.shape[0] == 3 * images
        assert unit_of_row.tolist() == [u for u in unit_of_row.tolist()[::3] for _ in range(3)]
        assert int(unit_of_row.max()) + 1 == count
        assert len(set(batch.image_keys.tolist())) == 3 * images  # each view its own noise draw
        assert torch.equal(batch.clean, replay.clean) and torch.equal(unit_of_row, replay_units)


def test_a_units_gradient_averages_each_images_views():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.ReLU(), nn.Conv2d(2, 1, 1))
    model = GradSampleModule(plain, loss_reduction="mean")
    rows = torch.rand(6, 1, 6, 6)  # unit 0: one image with 2 views; unit 1: two images with 2 views each
    target = torch.rand(6, 1, 6, 6)
    trainer = private.PrivateTraining(config(dp_unit="patient", dp_views=2), runtime=None)
    trainer.batches = batches([0, 1, 1])
    trainer.batches.views = 2
    trainer.batches.current_units = torch.tensor([0, 0, 1, 1, 1, 1])
    trainer.batches.current_count = 2
    nn.functional.l1_loss(model(rows), target).backward()
    per_row = plain[0].weight.grad_sample.clone()
    trainer.before_step(plain)
    grouped = plain[0].weight.grad_sample
    assert torch.allclose(grouped[0], per_row[0:2].sum(0) / 2)
    assert torch.allclose(grouped[1], per_row[2:6].sum(0) / 2)
