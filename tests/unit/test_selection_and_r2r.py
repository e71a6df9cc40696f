"""Clean-free model selection on released data, and R2R's averaging over re-corruptions at test time."""

from __future__ import annotations

import pytest
import torch

from meddenoise.data.loader import DeviceBatches
from meddenoise.engine.losses import l2_loss
from meddenoise.engine.runtime import Runtime
from meddenoise.engine.selection import released_validation_loss, resolve_rule
from meddenoise.engine.targets import build_target
from meddenoise.noise import NoiseSpec, build_noise
from meddenoise.privacy.targets import RecorruptionAverage

CLEAN_FREE = ("noise2noise", "neighbor2neighbor", "r2r")


class Shift(torch.nn.Module):
    """output = scale * (input - 0.1): scale 1 is a fair denoiser of nothing, scale 0 a useless one."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return self.scale * (x - 0.1)


def smooth_batches(count=16, size=16):
    grid = torch.linspace(0, 1, size)
    images = torch.stack(
        [0.3 + 0.4 * torch.outer(torch.sin(3 * grid + i), torch.cos(2 * grid)) ** 2 for i in range(count)]
    )
    stored = (images * 255).round().to(torch.uint8).unsqueeze(1)
    return DeviceBatches(stored, torch.arange(count, dtype=torch.int64), 255, 8, shuffle=False)


@pytest.mark.parametrize("name", CLEAN_FREE)
def test_released_loss_is_fixed_across_epochs_and_leaves_the_training_stream_alone(name):
    noise = NoiseSpec(std=0.1)
    noise_op = noise.build()
    target = build_target(name, noise_op, seed=2)
    runtime = Runtime(torch.device("cpu"))
    batches = smooth_batches()
    target.calls = 7
    first = released_validation_loss(Shift(1.0), batches, target, noise_op, noise, l2_loss, runtime)
    again = released_validation_loss(Shift(1.0), batches, target, noise_op, noise, l2_loss, runtime)
    assert first == again and target.calls == 7 and target.rank == 0
    worse = released_validation_loss(Shift(0.0), batches, target, noise_op, noise, l2_loss, runtime)
    assert worse > first


def test_auto_selection_is_released_for_clean_free_targets_only():
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    assert resolve_rule("auto", build_target("clean", noise_op)) == "clean"
    assert all(resolve_rule("auto", build_target(n, noise_op)) == "released" for n in CLEAN_FREE)
    assert resolve_rule("clean", build_target("r2r", noise_op)) == "clean"


def test_r2r_inference_averages_recorruptions_deterministically():
    noise_op = build_noise("gaussian", mean=0.1, std=0.2)
    plain = torch.nn.Identity()
    assert build_target("r2r", noise_op, samples=0).inference_model(plain) is plain
    averaged = build_target("r2r", noise_op, alpha=0.5, samples=16).inference_model(plain)
    assert isinstance(averaged, RecorruptionAverage) and averaged.samples == 16
    x = torch.full((2, 1, 32, 32), 0.5)
    out = averaged(x)
    assert torch.equal(out, averaged(x))  # the same re-corruptions every call
    one = build_target("r2r", noise_op, alpha=0.5, samples=1).inference_model(plain)(x)
    # each re-corruption adds noise of std alpha * std = 0.1; the mean of 16 has a quarter of it
    assert float((one - x).std()) == pytest.approx(0.1, rel=0.1)
    assert float((out - x).std()) == pytest.approx(0.1 / 4, rel=0.15)
