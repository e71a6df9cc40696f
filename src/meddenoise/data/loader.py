"""Clean batches gathered by index from a device-resident integer tensor (no DataLoader, no host float copy).

The whole split lives on the training device in its stored dtype (uint8: 7,499 x 256 x 256 is under 0.5 GB);
each step gathers its images by index and converts just that batch to float.

Sharding (every epoch, every rank computes the same plan, no communication):
- the epoch order is a permutation drawn from (seed, epoch), so a resumed run replays it exactly;
- the order is cut into global batches of `batch_size x world_size` images; each global batch goes to the
  ranks as `world_size` contiguous, near-equal parts (sizes differ by at most one);
- a last global batch with fewer images than ranks is merged into the one before it (so no rank ever gets an
  empty batch), hence every rank runs the same number of steps, as DDP requires, and every image is seen
  exactly once per epoch, never dropped and never duplicated. The step then weights each rank's loss by its
  share of the global batch, so DDP's gradient average equals the mean over the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from meddenoise.errors import DataError

# Host staging per copy when a split is placed on a GPU (the whole split never sits in host memory at once).
COPY_CHUNK_BYTES = 256 * 2**20


@dataclasses.dataclass
class CleanBatch:
    clean: torch.Tensor  # (b, 1, H, W) float32 in [0, 1], on the device
    image_keys: torch.Tensor  # (b,) int64, on the device
    positions: torch.Tensor  # (b,) int64: rows of the split tensor (for coverage checks)
    global_size: int  # images in this step over all ranks


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of range(count): a pure function of (seed, epoch), the same on every rank."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(count).astype(np.int64)


def global_batch_bounds(count: int, global_batch: int, world_size: int) -> list[tuple[int, int]]:
    """[start, end) of each global batch in the epoch order; a tail under `world_size` joins the last."""
    if count < world_size:
        raise DataError(
            f"{count} training image(s) cannot be shared among {world_size} ranks; use fewer processes"
        )
    bounds = [(start, min(start + global_batch, count)) for start in range(0, count, global_batch)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def rank_part(start: int, end: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous part of the global batch [start, end)."""
    size = end - start
    return start + rank * size // world_size, start + (rank + 1) * size // world_size


def copy_rows(images: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, 1, H, W) tensor on `device` of the memmap's `rows`; to a GPU in chunks, never a full host copy."""
    if device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(images[rows])).unsqueeze(1)
    dtype = torch.from_numpy(np.zeros(0, dtype=images.dtype)).dtype
    placed = torch.empty((len(rows), 1, *images.shape[1:]), dtype=dtype, device=device)
    chunk = max(1, COPY_CHUNK_BYTES // max(1, images[0].nbytes))
    for start in range(0, len(rows), chunk):
        part = np.ascontiguousarray(images[rows[start : start + chunk]])
        placed[start : start + len(part)].copy_(torch.from_numpy(part).unsqueeze(1))
    return placed


def epoch_plan(
    count: int,
    batch_size: int,
    rank: int,
    world_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    start_step: int = 0,
) -> Iterator[tuple[np.ndarray, int]]:
    """(this rank's positions, global batch size) of each step of `epoch` from `start_step` on."""
    order = epoch_order(count, seed, epoch) if shuffle else np.arange(count, dtype=np.int64)
    for start, end in global_batch_bounds(count, batch_size * world_size, world_size)[start_step:]:
        lo, hi = rank_part(start, end, rank, world_size)
        yield order[lo:hi], end - start


def shard_plan(count: int, batch_size: int, rank: int, world_size: int) -> Iterator[np.ndarray]:
    """Positions of this rank's contiguous evaluation shard, in batches of at most `batch_size`."""
    lo, hi = rank_part(0, count, rank, world_size)
    for start in range(lo, hi, batch_size):
        yield np.arange(start, min(start + batch_size, hi), dtype=np.int64)


def split_rows(data, split: str, limit: int = 0) -> np.ndarray:
    """Manifest rows of the first `limit` images of `split` (all when 0); an empty split is an error."""
    rows = data.indices(split)
    if limit:
        rows = rows[:limit]
    if len(rows) == 0:
        raise DataError(f"split {split!r} of {data.folder} has no images; choose another split or re-prepare")
    return rows


class DeviceBatches:
    """Training or evaluation batches of one split. `images` (n, 1, H, W) integer and `image_keys` (n,) int64
    live on the training device; `max_value` converts to [0, 1]."""

    def __init__(
        self,
        images: torch.Tensor,
        image_keys: torch.Tensor,
        max_value: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1; got {batch_size}")
        if images.shape[0] != image_keys.shape[0]:
            raise ValueError("images and image keys differ in length")
        self.images = images
        self.image_keys = image_keys.to(images.device)
        self.max_value = float(max_value)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle = shuffle
        self.device = images.device
        self.rows: np.ndarray | None = None  # manifest rows of the images, when built from a prepared folder

    @classmethod
    def from_prepared(
        cls, data, split: str, device, batch_size: int, *, limit: int = 0, **kwargs
    ) -> DeviceBatches:
        """The first `limit` images of `split` (all when 0), copied once to `device` in the stored dtype."""
        return cls.from_rows(data, split_rows(data, split, limit), device, batch_size, **kwargs)

    @classmethod
    def from_rows(cls, data, rows: np.ndarray, device, batch_size: int, **kwargs) -> DeviceBatches:
        """The images at manifest `rows` of a prepared folder (only those are read), copied to `device`."""
        images = copy_rows(data.images, rows, torch.device(device))
        keys = torch.from_numpy(data.image_keys[rows].copy())
        batches = cls(images, keys.to(device), data.max_value, batch_size, **kwargs)
        batches.rows = rows  # manifest rows, to report per-image results by image id
        return batches

    def __len__(self) -> int:
        return int(self.images.shape[0])

    # -- training: the same plan on every rank ------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return len(global_batch_bounds(len(self), self.batch_size * self.world_size, self.world_size))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]:
        """This rank's batches of `epoch`, from step `start_step` on (mid-epoch resume)."""
        order = (
            epoch_order(len(self), self.seed, epoch) if self.shuffle else np.arange(len(self), dtype=np.int64)
        )
        order_on_device = torch.from_numpy(order).to(self.device)
        bounds = global_batch_bounds(len(self), self.batch_size * self.world_size, self.world_size)
        for start, end in bounds[start_step:]:
            lo, hi = rank_part(start, end, self.rank, self.world_size)
            yield self._gather(order_on_device[lo:hi], end - start)

    # -- evaluation: a contiguous shard per rank, batches of at most batch_size --------------------------
    def shard(self) -> Iterator[CleanBatch]:
        """This rank's share of the split in order (uneven shards are fine: results are reduced as sums)."""
        lo, hi = rank_part(0, len(self), self.rank, self.world_size)
        for start in range(lo, hi, self.batch_size):
            positions = torch.arange(start, min(start + self.batch_size, hi), device=self.device)
            yield self._gather(positions, len(positions))

    def _gather(self, positions: torch.Tensor, global_size: int) -> CleanBatch:
        # stored integers -> float in [0, 1], one batch at a time (no float copy of the whole split)
        clean = self.images.index_select(0, positions).float().div_(self.max_value)
        return CleanBatch(clean, self.image_keys.index_select(0, positions), positions, global_size)
