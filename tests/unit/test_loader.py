"""Device batches: epoch order from (seed, epoch), disjoint rank shards, every image once per epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddenoise.data.loader import DeviceBatches, epoch_order, global_batch_bounds, rank_part
from meddenoise.errors import DataError


def make_batches(count: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, **kw):
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 4, 4).contiguous()
    keys = torch.arange(1000, 1000 + count, dtype=torch.int64)
    return DeviceBatches(images, keys, 255, batch_size, rank=rank, world_size=world_size, seed=seed, **kw)


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(50, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(order, epoch_order(50, seed=3, epoch=2))
    assert not np.array_equal(order, epoch_order(50, seed=4, epoch=1))


@pytest.mark.parametrize("count", [7, 16, 17, 23, 33, 64])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_see_disjoint_shards_covering_every_image_once(count, world_size):
    per_rank = [make_batches(count, 4, rank, world_size, seed=1) for rank in range(world_size)]
    steps = {b.steps_per_epoch() for b in per_rank}
    assert len(steps) == 1, "DDP needs the same number of steps on every rank"
    for epoch in range(2):
        seen = []
        for batches in per_rank:
            rank_batches = list(batches.epoch(epoch))
            assert len(rank_batches) == batches.steps_per_epoch()
            for batch in rank_batches:
                assert batch.clean.shape[0] >= 1, "no rank may get an empty batch"
                seen += batch.positions.tolist()
                # the pixels are the image index: check the gather took the right rows
                assert torch.equal(batch.clean[:, 0, 0, 0] * 255, batch.positions.float())
                assert torch.equal(batch.image_keys, batch.positions + 1000)
        assert sorted(seen) == list(range(count))


def test_global_batches_are_split_contiguously_and_match_a_single_process():
    single = list(make_batches(24, 8).epoch(0))
    ranks = [list(make_batches(24, 4, rank, 2).epoch(0)) for rank in range(2)]
    for step, batch in enumerate(single):
        together = torch.cat([ranks[0][step].positions, ranks[1][step].positions])
        assert torch.equal(together, batch.positions)
        assert ranks[0][step].global_size == batch.global_size == 8


def test_short_tail_joins_the_previous_global_batch():
    assert global_batch_bounds(9, 4, 2) == [(0, 4), (4, 9)]  # a tail of 1 < 2 ranks is merged
    assert global_batch_bounds(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    assert rank_part(8, 10, 0, 2) == (8, 9) and rank_part(8, 10, 1, 2) == (9, 10)
    with pytest.raises(DataError):
        global_batch_bounds(1, 4, 2)


def test_resume_mid_epoch_replays_the_remaining_batches():
    batches = make_batches(30, 4, seed=5)
    full = [b.positions for b in batches.epoch(2)]
    rest = [b.positions for b in batches.epoch(2, start_step=3)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], rest)) and len(rest) == len(full) - 3


def test_evaluation_shards_cover_the_split_in_order():
    positions = []
    for rank in range(3):
        positions += [p for b in make_batches(10, 3, rank, 3).shard() for p in b.positions.tolist()]
    assert positions == list(range(10))


def test_from_prepared_keeps_the_stored_dtype_on_the_device(make_prepared):
    from meddenoise.data.cache import load_prepared

    data = load_prepared(make_prepared(n=12, size=16))
    batches = DeviceBatches.from_prepared(data, "train", "cpu", 4, limit=3)
    assert batches.images.dtype == torch.uint8 and len(batches) == 3
    assert np.array_equal(batches.rows, data.indices("train")[:3])
    batch = next(batches.epoch(0))
    assert batch.clean.dtype == torch.float32 and float(batch.clean.max()) <= 1.0
