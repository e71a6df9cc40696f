"""Tiled inference: coverage, blending, agreement with whole-image inference and bounded tile batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from meddenoise.errors import ConfigError
from meddenoise.models import build_model, denoise_tiled
from meddenoise.models.tiling import _size_multiple, edge_window, tile_starts


@settings(max_examples=200, deadline=None)
@given(
    align=st.sampled_from([1, 2, 4, 16]),
    length_units=st.integers(1, 150),
    tile_units=st.integers(1, 40),
    overlap_fraction=st.floats(0.0, 0.99),
)
def test_tile_starts_cover_the_axis_with_the_requested_overlap(
    align, length_units, tile_units, overlap_fraction
):
    length, tile = length_units * align, max(8, tile_units * align)
    tile -= tile % align
    overlap = min(int(overlap_fraction * tile), tile - align)
    starts = tile_starts(length, tile, overlap, align)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(start % align == 0 for start in starts)
    assert all(0 < later - earlier <= tile - overlap for earlier, later in zip(starts, starts[1:]))


def test_edge_window_ramps_are_positive_and_complementary():
    window = edge_window(40, 16, taper_start=True, taper_end=True)
    assert (window > 0).all() and window.max() == 1.0
    rising, falling = window[:16], edge_window(40, 16, False, True)[-16:]
    torch.testing.assert_close(rising + falling, torch.ones(16, dtype=torch.float64))
    assert torch.equal(edge_window(40, 16, False, False), torch.ones(40, dtype=torch.float64))


def eval_model(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, base_channels=4, **options).eval()


def exact_region(shape: tuple[int, int], tile: int, overlap: int, multiple: int, margin: int) -> torch.Tensor:
    """Pixels that no covering tile sees within `margin` (the receptive-field radius) of a cut edge."""
    height, width = shape
    padded = [-(-side // multiple) * multiple for side in shape]
    tile_sizes = [min(tile, side) for side in padded]
    unsafe = torch.zeros(padded)
    for top in tile_starts(padded[0], tile, overlap, multiple):
        for left in tile_starts(padded[1], tile, overlap, multiple):
            bottom, right = top + tile_sizes[0], left + tile_sizes[1]
            region = torch.zeros(padded, dtype=torch.bool)
            region[top:bottom, left:right] = True
            inner = torch.zeros(padded, dtype=torch.bool)
            inner[
                top + (margin if top > 0 else 0) : bottom - (margin if bottom < padded[0] else 0),
                left + (margin if left > 0 else 0) : right - (margin if right < padded[1] else 0),
            ] = True
            unsafe += (region & ~inner).float()
    return (unsafe == 0)[:height, :width]


@pytest.mark.parametrize(
    "name,options,margin",
    [("dncnn", {"num_layers": 3}, 3), ("unet", {"depth": 3}, 40), ("unetpp", {"depth": 3}, 40)],
)
def test_tiled_equals_whole_image_away_from_seams(name, options, margin):
    model = eval_model(name, **options)
    image = torch.rand(1, 1, 300, 250)
    with torch.no_grad():
        whole = model(image)
    tiled = denoise_tiled(model, image, tile=128, overlap=42, batch_tiles=3)
    assert tiled.shape == image.shape
    exact = exact_region((300, 250), 128, 42, model.size_multiple, margin)
    assert exact.float().mean() > 0.2  # the comparison below is not vacuous
    difference = (tiled - whole)[0, 0]
    assert difference[exact].abs().max() < 1e-5
    # Near seams the blend down-weights the cut tile edges, so the error stays small there too.
    assert difference.abs().max() < 0.05 * whole.abs().max()


def test_an_image_smaller_than_a_tile_is_one_whole_forward():
    model = eval_model("unet", depth=3)
    image = torch.rand(2, 1, 45, 31)
    with torch.no_grad():
        whole = model(image)
    torch.testing.assert_close(denoise_tiled(model, image, tile=64, overlap=16), whole, rtol=0, atol=1e-6)


def test_images_of_a_batch_are_denoised_independently():
    model = eval_model("dncnn", num_layers=4)
    images = torch.rand(2, 1, 70, 90)
    together = denoise_tiled(model, images, tile=32, overlap=8, batch_tiles=5)
    for index in range(2):
        alone = denoise_tiled(model, images[index : index + 1], tile=32, overlap=8, batch_tiles=5)
        torch.testing.assert_close(together[index : index + 1], alone, rtol=0, atol=1e-6)


class RecordingModel(nn.Module):
    """Wraps a model and records every input it receives.

    Device memory of one forward pass is a function of the input's shape only, so the largest input the model
    ever sees is a faithful, platform-independent proxy for peak device memory (CPU allocator statistics are
    not reliable enough to assert on).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.size_multiple = inner.size_multiple
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(tiles.shape))
        return self.inner(tiles)


@pytest.mark.parametrize("height,width", [(64, 64), (190, 150)])
def test_tile_batches_are_bounded_whatever_the_image_size(height, width):
    model = RecordingModel(eval_model("unet", depth=3))
    images = torch.rand(2, 1, height, width)
    denoise_tiled(model, images, tile=32, overlap=8, batch_tiles=3)
    assert max(shape[0] for shape in model.input_shapes) <= 3
    assert {shape[1:] for shape in model.input_shapes} == {(1, 32, 32)}
    padded_height, padded_width = -(-height // 4) * 4, -(-width // 4) * 4  # unet depth 3 pads to 4
    tiles = 2 * len(tile_starts(padded_height, 32, 8, 4)) * len(tile_starts(padded_width, 32, 8, 4))
    calls_needed = -(-tiles // 3)
    assert len(model.input_shapes) == calls_needed


def test_model_mode_is_restored_and_wrappers_are_seen_through():
    model = eval_model("unet", depth=3).train()
    denoise_tiled(model, torch.rand(1, 1, 40, 40), tile=32, overlap=8)
    assert model.training
    assert _size_multiple(nn.DataParallel(model)) == 4
    assert _size_multiple(nn.Identity()) == 1


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [
        ({"tile": 4}, ConfigError, "'tile' must be at least 8"),
        ({"tile": 32, "overlap": 32}, ConfigError, "'overlap' must be between 0"),
        ({"tile": 32, "overlap": 30}, ConfigError, "use an overlap of at most 28"),
        ({"batch_tiles": 0}, ConfigError, "'batch_tiles' must be at least 1"),
    ],
)
def test_bad_tiling_options_raise_config_errors(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        denoise_tiled(eval_model("unet", depth=3), torch.rand(1, 1, 40, 40), **kwargs)


def test_image_must_be_batch_by_one_channel():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        denoise_tiled(eval_model("dncnn", num_layers=3), torch.rand(40, 40))
