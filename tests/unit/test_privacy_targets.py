"""Clean-free training targets: the noise-mean/clamp link, the sub-sampler, the never-touches-clean guarantee,
and a tiny training run per target that beats the obfuscated input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddenoise.engine.losses import l1_loss, l2_loss
from meddenoise.engine.targets import TargetBatch, build_target, list_targets, make_target_batch
from meddenoise.errors import ConfigError
from meddenoise.noise import NoiseSpec, build_noise
from meddenoise.privacy.targets import (
    expected_observation,
    loss_statistic,
    neighbour_choice,
    neighbour_subsample,
    residual_bias,
)

CLEAN_FREE = ("noise2noise", "neighbor2neighbor", "r2r")


class CleanPixelsTouched(AssertionError):
    pass


class PoisonedClean(torch.Tensor):
    """A tensor that fails the test the moment any torch operation reads it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise CleanPixelsTouched(f"clean pixels were used by {getattr(func, '__name__', func)}")


def poisoned(shape) -> torch.Tensor:
    return torch.zeros(shape).as_subclass(PoisonedClean)


def test_expected_observation_matches_monte_carlo_of_the_clamped_noise():
    generator = torch.Generator().manual_seed(0)
    clean = torch.linspace(0, 1, 21)
    for std in (0.1, 0.3):
        samples = (clean + 0.1 + std * torch.randn(200_000, 21, generator=generator)).clamp(0, 1)
        expected = expected_observation(clean, 0.1, std, clamp=True, correction="expected-clamp")
        assert torch.allclose(expected, samples.mean(dim=0), atol=3e-3)
    # without clamping, and in the zero-noise limit, it is the plain shift / clamp
    assert torch.allclose(expected_observation(clean, 0.1, 0.2, clamp=False), clean + 0.1)
    assert torch.allclose(expected_observation(clean, 0.1, 1e-6), (clean + 0.1).clamp(0, 1), atol=1e-5)
    assert torch.all(expected_observation(clean, 0.1, 0.3).diff() > 0)  # invertible


def test_residual_bias_of_each_correction():
    clean = torch.linspace(0, 1, 101)
    # the exact link leaves no bias (up to the bisection's precision)
    assert residual_bias(clean, 0.1, 0.3, "expected-clamp").abs().max() < 1e-4
    # subtracting the mean only, squared loss: bright pixels pulled down, dark ones lifted, mid-range exact
    mean_only = residual_bias(clean, 0.1, 0.2, "mean")
    assert mean_only[-1] < -0.1 and mean_only[0] > 0.03
    assert mean_only[35:56].abs().max() < 0.005
    # L1 learns the median: exact below 1 - mean, saturated at 0.9 above
    median = residual_bias(clean, 0.1, 0.2, "mean", statistic="median")
    assert median[clean <= 0.9].abs().max() < 1e-6
    assert torch.allclose(median[clean > 0.9], 0.9 - clean[clean > 0.9], atol=1e-6)


def test_loss_statistic_tells_l1_from_l2():
    assert loss_statistic(l1_loss) == "median"
    assert loss_statistic(l2_loss) == "mean"


def test_neighbour_subsample_takes_two_adjacent_pixels_of_each_cell():
    height, width = 6, 8
    image = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    choice = neighbour_choice(image, torch.Generator().manual_seed(0))
    first, second = neighbour_subsample(image, choice)  # (1, 1, 3, 4) each
    assert first.shape == (1, 1, 3, 4) and second.shape == (1, 1, 3, 4)
    rows_a, cols_a = (first // width).long(), (first % width).long()
    rows_b, cols_b = (second // width).long(), (second % width).long()
    cell_rows = torch.arange(3).view(1, 1, 3, 1)
    cell_cols = torch.arange(4).view(1, 1, 1, 4)
    for rows, cols in ((rows_a, cols_a), (rows_b, cols_b)):
        assert torch.equal(rows // 2, cell_rows.expand_as(rows)) and torch.equal(
            cols // 2, cell_cols.expand_as(cols)
        )
    manhattan = (rows_a - rows_b).abs() + (cols_a - cols_b).abs()
    assert torch.all(manhattan == 1)
    # all 8 ordered neighbour pairs occur on a larger image
    many = neighbour_choice(torch.zeros(4, 1, 32, 32), torch.Generator().manual_seed(1))
    assert set(many.unique().tolist()) == set(range(8))


def test_targets_are_registered_and_declare_copies():
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    assert set(CLEAN_FREE) <= set(list_targets())
    copies = {name: build_target(name, noise_op, seed=0).copies for name in CLEAN_FREE}
    assert copies == {"noise2noise": 2, "neighbor2neighbor": 1, "r2r": 1}
    assert not any(build_target(name, noise_op).needs_clean for name in CLEAN_FREE)
    with pytest.raises(ConfigError, match="unknown option"):
        build_target("r2r", noise_op, beta=1.0)
    with pytest.raises(ConfigError, match="alpha"):
        build_target("r2r", noise_op, alpha=0.0)
    with pytest.raises(ConfigError, match="gaussian"):
        build_target("noise2noise", build_noise("poisson", dose=100.0))


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    from meddenoise.models import build_model

    torch.manual_seed(seed)
    return build_model("dncnn", base_channels=16, num_layers=5, norm="group")


@pytest.mark.parametrize("name", CLEAN_FREE)
def test_loss_never_reads_clean_pixels(name):
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    target = build_target(name, noise_op, seed=0)
    clean = torch.rand(4, 1, 16, 16)
    keys = torch.arange(4, dtype=torch.int64)
    batch = make_target_batch(target, clean, keys, noise_op, NoiseSpec(seed=0), epoch=0)
    assert batch.clean is None and len(batch.noisy) == target.copies
    # even a batch that carries clean pixels by mistake: any read of them raises
    trap = TargetBatch(noisy=batch.noisy, clean=poisoned((4, 1, 16, 16)), image_keys=keys)
    with pytest.raises(CleanPixelsTouched):
        torch.add(trap.clean, 1)
    model = _tiny_model()
    loss = target.loss(model, trap, l2_loss)
    loss.backward()
    assert torch.isfinite(loss) and model.body[0].weight.grad is not None


@pytest.mark.parametrize("name", CLEAN_FREE)
def test_target_randomness_is_seeded_and_resumable(name):
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    clean = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    keys = torch.arange(3, dtype=torch.int64)

    def losses(target, model, steps, start=0):
        out = []
        for step in range(start, start + steps):
            batch = make_target_batch(
                target, clean, keys, noise_op, NoiseSpec(seed=0, mode="fresh"), epoch=step
            )
            with torch.no_grad():
                out.append(float(target.loss(model, batch, l2_loss)))
        return out

    model = _tiny_model().eval()
    first = losses(build_target(name, noise_op, seed=5), model, 4)
    assert first == losses(build_target(name, noise_op, seed=5), model, 4)
    resumed = build_target(name, noise_op, seed=5)
    losses(resumed, model, 2)
    state = resumed.state_dict()
    fresh = build_target(name, noise_op, seed=999)
    fresh.load_state_dict(state)
    assert losses(fresh, model, 2, start=2) == first[2:]


def _psnr(pred: torch.Tensor, clean: torch.Tensor) -> float:
    mse = ((pred.clamp(0, 1) - clean) ** 2).flatten(1).mean(dim=1)
    return float((10 * torch.log10(1.0 / mse)).mean())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "loss_fn"), [(n, l2_loss) for n in CLEAN_FREE] + [("noise2noise", l1_loss)])
def test_tiny_run_beats_the_obfuscated_input(name, loss_fn, make_prepared):
    """100 steps of a hand-written loop on smooth 32 x 32 images (the engine's loop is tested in
    test_privacy_training.py); validation PSNR must beat the released image and the released image with its
    known mean removed by 2 dB each."""
    from meddenoise.data.cache import load_prepared

    torch.manual_seed(0)
    data = load_prepared(make_prepared(n=48, size=32, patients=12, seed=1))
    images = torch.from_numpy(np.array(data.images)).unsqueeze(1).float() / 255.0  # (N, 1, 32, 32)
    keys = torch.from_numpy(data.image_keys)
    val = torch.from_numpy(data.splits != "train")
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    target = build_target(name, noise_op, seed=0)
    model = _tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    train_rows = torch.nonzero(~val).squeeze(1)
    generator = torch.Generator().manual_seed(0)
    for step in range(100):
        rows = train_rows[torch.randint(0, len(train_rows), (8,), generator=generator)]
        batch = make_target_batch(
            target, images[rows], keys[rows], noise_op, NoiseSpec(seed=0, mode="fresh"), epoch=step
        )
        optimizer.zero_grad()
        target.loss(model, batch, loss_fn).backward()
        optimizer.step()
    model.eval()
    clean_val = images[val]
    noisy_val = noise_op(clean_val, keys[val], seed=12345, mode="fixed")
    with torch.no_grad():
        denoised = model(noisy_val)
    released, mean_removed, restored = (
        _psnr(noisy_val, clean_val),
        _psnr(noisy_val - 0.1, clean_val),
        _psnr(denoised, clean_val),
    )
    assert restored > mean_removed + 2.0 > released + 2.0, (released, mean_removed, restored)


@pytest.mark.parametrize("name", CLEAN_FREE)
def test_ddp_ranks_draw_their_own_swaps_masks_and_recorruptions(name):
    """Under DDP the trainer sets `target.rank`: ranks with one seed must not repeat each other's draws, and
    the checkpointed state (seed, step count) is the same on every rank, so resuming restores each stream."""
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    clean = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    keys = torch.arange(4, dtype=torch.int64)
    batch = make_target_batch(build_target(name, noise_op), clean, keys, noise_op, NoiseSpec(seed=0), epoch=0)
    model = _tiny_model().eval()

    def draws(rank, steps=3, state=None):
        target = build_target(name, noise_op, seed=5)
        target.rank = rank
        if state is not None:
            target.load_state_dict(state)
        with torch.no_grad():
            values = [float(target.loss(model, batch, l2_loss)) for _ in range(steps)]
        return values, target.state_dict()

    rank0, state0 = draws(0)
    rank1, state1 = draws(1)
    assert rank0 != rank1
    assert state0 == state1 == {"seed": 5, "calls": 3}
    assert draws(1)[0] == rank1
    first_two, state = draws(1, steps=2)
    assert draws(1, steps=1, state=state)[0] == rank1[2:]
