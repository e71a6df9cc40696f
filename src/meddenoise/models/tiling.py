"""Tiled inference for images larger than the device can hold at once (a 2500x2048 radiograph through
U-Net++).

The image stays where it is (usually CPU); tiles of `tile` x `tile` pixels overlapping by `overlap` are cut
from it, `batch_tiles` at a time are moved to the model's device and denoised, and each prediction is
multiplied by a window and added to an output buffer on the image's device, together with the window itself;
the result is the weighted sum divided by the summed weights. Device memory therefore depends on `tile` and
`batch_tiles` only, never on the image size; host memory holds the image, the output, one (H, W) weight
map and at most nine tile windows.

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
    tile = _aligned_tile(tile, overlap, multiple)
    compute_device = torch.device(device) if device is not None else _model_device(model, image.device)
    batch, _, height, width = image.shape
    padded = pad_to_multiple(image, multiple)  # (B, 1, H', W'), H' and W' multiples of `multiple`
    grid = TileGrid(padded.shape[-2], padded.shape[-1], tile, overlap, multiple, image.device)

    output = torch.zeros(batch, 1, *grid.shape, dtype=torch.float32, device=image.device)
    jobs = [(index, top, left) for index in range(batch) for top, left in grid.positions()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(jobs), batch_tiles):
                chunk = jobs[first : first + batch_tiles]
                # (n, 1, tile_h, tile_w), n <= batch_tiles: the only image data on the compute device.
                tiles = torch.stack([grid.cut(padded[i], top, left) for i, top, left in chunk])
                predictions = model(tiles.to(compute_device)).float().to(image.device)
                for (i, top, left), prediction in zip(chunk, predictions):
                    grid.cut(output[i], top, left).add_(prediction * grid.window(top, left))
    finally:
        model.train(was_training)
    return crop_to(output / grid.weight_sum(), height, width)


def _aligned_tile(tile: int, overlap: int, multiple: int) -> int:
    """`tile` rounded down to the model's size multiple; tiles must stay at least one multiple apart."""
    if tile < multiple:
        raise ConfigError(f"option 'tile' ({tile}) must be at least the model's size multiple ({multiple})")
    tile -= tile % multiple
    if tile - overlap < multiple:
        raise ConfigError(
            f"option 'overlap' ({overlap}) leaves tiles of {tile} px less than the model's size multiple "
            f"({multiple}) apart; use an overlap of at most {tile - multiple}"
        )
    return tile


class TileGrid:
    """Where the tiles of one padded (H', W') image lie, and their blending windows."""

    def __init__(self, height: int, width: int, tile: int, overlap: int, multiple: int, device) -> None:
        self.shape = (height, width)
        self.tile_height, self.tile_width = min(tile, height), min(tile, width)
        self.overlap = overlap
        self.row_starts = tile_starts(height, tile, overlap, multiple)
        self.column_starts = tile_starts(width, tile, overlap, multiple)
        self.device = device
        # A window depends only on which sides of its tile border another tile: at most 9 distinct ones.
        self._windows: dict[tuple[bool, bool, bool, bool], torch.Tensor] = {}

    def positions(self) -> list[tuple[int, int]]:
        return [(top, left) for top in self.row_starts for left in self.column_starts]

    def cut(self, tensor: torch.Tensor, top: int, left: int) -> torch.Tensor:
        """The view of (..., H', W') `tensor` covered by the tile at (top, left): (..., tile_h, tile_w)."""
        return tensor[..., top : top + self.tile_height, left : left + self.tile_width]

    def window(self, top: int, left: int) -> torch.Tensor:
        """(tile_h, tile_w) float32 blending weights of the tile at (top, left)."""
        height, width = self.shape
        tapers = (top > 0, top + self.tile_height < height, left > 0, left + self.tile_width < width)
        if tapers not in self._windows:
            rows = edge_window(self.tile_height, self.overlap, tapers[0], tapers[1])
            columns = edge_window(self.tile_width, self.overlap, tapers[2], tapers[3])
            self._windows[tapers] = torch.outer(rows, columns).to(device=self.device, dtype=torch.float32)
        return self._windows[tapers]

    def weight_sum(self) -> torch.Tensor:
        """(H', W') sum of the windows of all tiles (> 0 everywhere: the tiles cover the image)."""
        total = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        for top, left in self.positions():
            self.cut(total, top, left).add_(self.window(top, left))
        return total
