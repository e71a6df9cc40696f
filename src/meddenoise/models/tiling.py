"""Tiled inference for images larger than the device can hold at once (a 2500x2048 radiograph through
U-Net++).

The image stays where it is (usually CPU); tiles of `tile` x `tile` pixels overlapping by `overlap` are cut
from it, `batch_tiles` at a time are moved to the model's device and denoised, and each prediction is
multiplied by a window and added to an output buffer on the image's device, together with the window itself;
the result is the weighted sum divided by the summed weights. Device memory therefore depends on `tile` and
`batch_tiles` only, never on the image size; host memory holds the image, the output and one (H, W) weight
map.

The window is 1 in the middle of a tile and falls off with a raised cosine over the `overlap` pixels on each
side that borders another tile (not on the image border). A tile's outermost pixels are the ones it predicts
worst (their receptive field is cut by the tile edge), so they get the smallest weights, and the blend has no
seams.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from meddenoise.errors import ConfigError
from meddenoise.models.layers import crop_to, pad_to_multiple


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size min(tile, length) covering [0, length), consecutive ones overlapping by
    at least `overlap`, every start a multiple of `align` (`length` and `tile` must be multiples of it); the
    last tile ends exactly at the border."""
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    return [*range(0, length - tile, stride), length - tile]


def edge_window(size: int, ramp: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    """(size,) weights: 1, with a raised-cosine ramp of `ramp` pixels on the tapered ends (all > 0)."""
    window = torch.ones(size, dtype=torch.float64)
    ramp = min(ramp, size)
    if ramp > 0:
        # Half-pixel offsets keep every weight > 0 and make opposite ramps sum to exactly 1.
        positions = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
        rising = 0.5 - 0.5 * torch.cos(math.pi * positions)
        if taper_start:
            window[:ramp] = torch.minimum(window[:ramp], rising)
        if taper_end:
            window[-ramp:] = torch.minimum(window[-ramp:], rising.flip(0))
    return window


def _check_options(image: torch.Tensor, tile: int, overlap: int, batch_tiles: int) -> None:
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"denoise_tiled expects a (B, 1, H, W) image; got shape {tuple(image.shape)}")
    if tile < 8:
        raise ConfigError(f"option 'tile' must be at least 8 pixels; got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"option 'overlap' must be between 0 and tile - 1 ({tile - 1}); got {overlap}")
    if batch_tiles < 1:
        raise ConfigError(f"option 'batch_tiles' must be at least 1; got {batch_tiles}")


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _size_multiple(model: nn.Module) -> int:
    """The model's padding multiple, seen through DDP/DataParallel (`.module`) and compile (`_orig_mod`)."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        multiple = getattr(candidate, "size_multiple", None)
        if isinstance(multiple, int) and multiple >= 1:
            return multiple
    return 1


def denoise_tiled(
    model: nn.Module,
    image: torch.Tensor,
    tile: int = 512,
    overlap: int = 64,
    batch_tiles: int = 4,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Denoise (B, 1, H, W) `image` tile by tile; returns a float32 (B, 1, H, W) tensor on the image's device.

    `device` is where the tiles are computed (default: where the model's parameters are). The model runs in
    eval mode under `torch.no_grad()` (its previous mode is restored); precision is the caller's choice (wrap
    the call in autocast). An image no larger than one tile is a single forward pass.

    The image is padded exactly as the model pads a whole image (reflect, bottom/right, to the model's
    `size_multiple`), and tile sizes and starts are multiples of it, so every tile sees the same pooling grid
    as the whole image and, away from seams, tiled and whole-image outputs agree to float precision.
    `tile` is rounded down to that multiple and the stride too (the overlap can only grow).
    """
    _check_options(image, tile, overlap, batch_tiles)
    multiple = _size_multiple(model)
    if tile < multiple:
        raise ConfigError(f"option 'tile' ({tile}) must be at least the model's size multiple ({multiple})")
    tile -= tile % multiple
    if tile - overlap < multiple:
        raise ConfigError(
            f"option 'overlap' ({overlap}) leaves tiles of {tile} px less than the model's size multiple "
            f"({multiple}) apart; use an overlap of at most {tile - multiple}"
        )
    compute_device = torch.device(device) if device is not None else _model_device(model, image.device)
    batch, _, height, width = image.shape
    padded = pad_to_multiple(image, multiple)  # (B, 1, H', W'), H' and W' multiples of `multiple`
    padded_height, padded_width = padded.shape[-2], padded.shape[-1]
    tile_height, tile_width = min(tile, padded_height), min(tile, padded_width)
    row_starts = tile_starts(padded_height, tile, overlap, multiple)
    column_starts = tile_starts(padded_width, tile, overlap, multiple)

    windows: dict[tuple[int, int], torch.Tensor] = {}
    weight_sum = torch.zeros(padded_height, padded_width, dtype=torch.float32, device=image.device)
    for top in row_starts:
        rows = edge_window(tile_height, overlap, top > 0, top + tile_height < padded_height)
        for left in column_starts:
            columns = edge_window(tile_width, overlap, left > 0, left + tile_width < padded_width)
            window = torch.outer(rows, columns).to(torch.float32).to(image.device)  # (tile_h, tile_w)
            windows[(top, left)] = window
            weight_sum[top : top + tile_height, left : left + tile_width] += window

    output = torch.zeros(batch, 1, padded_height, padded_width, dtype=torch.float32, device=image.device)
    jobs = [(index, top, left) for index in range(batch) for top in row_starts for left in column_starts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(jobs), batch_tiles):
                chunk = jobs[first : first + batch_tiles]
                # (n, 1, tile_h, tile_w), n <= batch_tiles: the only image data on the compute device.
                tiles = torch.stack(
                    [
                        padded[i, :, top : top + tile_height, left : left + tile_width]
                        for i, top, left in chunk
                    ]
                ).to(compute_device)
                predictions = model(tiles).float().to(image.device)
                for (i, top, left), prediction in zip(chunk, predictions):
                    region = output[i, :, top : top + tile_height, left : left + tile_width]
                    region += prediction * windows[(top, left)]
    finally:
        model.train(was_training)
    return crop_to(output / weight_sum, height, width)
