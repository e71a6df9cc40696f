"""Streamed batches (`--data-placement stream`): the resident batches, read from the memmap by index."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
import torch

from meddenoise.data.cache import load_prepared
from meddenoise.data.loader import DeviceBatches
from meddenoise.data.streaming import StreamBatches
from meddenoise.engine import placement
from meddenoise.errors import ConfigError, HostMemoryError


def same_batch(a, b) -> None:
    assert a.clean.dtype == b.clean.dtype == torch.float32
    assert torch.equal(a.clean, b.clean)
    assert torch.equal(a.image_keys, b.image_keys)
    assert torch.equal(a.positions, b.positions)
    assert a.global_size == b.global_size


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("world_size", [1, 3])
def test_streamed_batches_equal_the_resident_ones_bitwise(make_prepared, dtype, world_size):
    data = load_prepared(make_prepared(n=40, size=16, dtype=dtype))
    for rank in range(world_size):
        options = dict(rank=rank, world_size=world_size, seed=5, limit=13)
        resident = DeviceBatches.from_prepared(data, "train", "cpu", 4, **options)
        streamed = StreamBatches.from_prepared(data, "train", "cpu", 4, **options)
        assert len(streamed) == len(resident) == 13
        assert streamed.steps_per_epoch() == resident.steps_per_epoch()
        for epoch in (0, 1):
            for start_step in (0, 1):  # a mid-epoch resume starts at a later step
                pairs = list(zip(resident.epoch(epoch, start_step), streamed.epoch(epoch, start_step)))
                assert len(pairs) == resident.steps_per_epoch() - start_step
                for a, b in pairs:
                    same_batch(a, b)
        val_resident = DeviceBatches.from_prepared(
            data, "val", "cpu", 3, shuffle=False, rank=rank, world_size=world_size
        )
        val_streamed = StreamBatches.from_prepared(
            data, "val", "cpu", 3, shuffle=False, rank=rank, world_size=world_size
        )
        pairs = list(zip(val_resident.shard(), val_streamed.shard()))
        assert len(pairs) == len(list(val_resident.shard())) > 1
        for a, b in pairs:
            same_batch(a, b)
        assert np.array_equal(val_streamed.rows, val_resident.rows)


def test_a_rank_reads_only_the_rows_of_its_own_shard(make_prepared, monkeypatch):
    data = load_prepared(make_prepared(n=60, size=8, split_by="image"))
    rows_of_split = data.indices("train")
    reads: list[tuple[str, int]] = []  # (thread name, row of images.npy)
    real_preadv = os.preadv
    row_bytes = data.images[0].nbytes

    def recording_preadv(handle, buffers, offset, *args):
        reads.append((threading.current_thread().name, (offset - data.images.offset) // row_bytes))
        return real_preadv(handle, buffers, offset, *args)

    monkeypatch.setattr(os, "preadv", recording_preadv)
    world_size, per_rank = 2, []
    for rank in range(world_size):
        reads.clear()
        batches = StreamBatches.from_prepared(data, "train", "cpu", 4, rank=rank, world_size=world_size)
        positions = torch.cat([b.positions for b in batches.epoch(0)]).numpy()
        assert {name for name, _ in reads} == {"meddenoise-stream"}, "rows are read in the thread only"
        rows = [row for _, row in reads]
        assert sorted(rows) == sorted(rows_of_split[positions].tolist())
        per_rank.append(set(rows))
    assert not per_rank[0] & per_rank[1], "the ranks' reads must be disjoint"
    assert per_rank[0] | per_rank[1] == set(rows_of_split.tolist())


def test_leaving_an_epoch_early_stops_the_reading_thread(make_prepared):
    data = load_prepared(make_prepared(n=40, size=8, split_by="image"))
    batches = StreamBatches.from_prepared(data, "train", "cpu", 2)
    before = {t.ident for t in threading.enumerate()}
    epoch = batches.epoch(0)
    next(epoch)
    epoch.close()
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "meddenoise-stream"]
    assert not left


def test_a_read_error_in_the_thread_reaches_the_training_loop(make_prepared, monkeypatch):
    data = load_prepared(make_prepared(n=40, size=8, split_by="image"))
    batches = StreamBatches.from_prepared(data, "train", "cpu", 2)

    def failing_read(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing_read)
    with pytest.raises(OSError, match="Input/output error"):
        list(batches.epoch(0))


def test_a_file_truncated_under_the_run_is_a_message_not_sigbus(make_prepared):
    """Issue 23, row 9: a streamed run whose images.npy was truncated died of SIGBUS with nothing printed."""
    from meddenoise.errors import DataError

    folder = make_prepared(n=40, size=8, split_by="image")
    data = load_prepared(folder)
    batches = StreamBatches.from_prepared(data, "train", "cpu", 2)
    path = folder / "images.npy"
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 3)
    with pytest.raises(DataError, match="images.npy is shorter than when it was prepared.*resume") as refused:
        list(batches.epoch(0))
    assert refused.value.parameter == "resume"


def test_pixels_rewritten_in_place_are_refused_by_their_content_hash(make_prepared):
    """Issue 23, row 15: images.npy rewritten with inverted pixels (same size) trained silently."""
    from meddenoise.errors import DataError

    folder = make_prepared(n=40, size=8, split_by="image")
    data = load_prepared(folder)
    batches = StreamBatches.from_prepared(data, "train", "cpu", 2)
    assert len(list(batches.epoch(0))) > 0  # intact: every row matches its recorded hash
    rewritten = np.load(folder / "images.npy", mmap_mode="r+")
    rewritten[:] = 255 - rewritten
    rewritten.flush()
    fresh = StreamBatches.from_prepared(data, "train", "cpu", 2)
    with pytest.raises(DataError, match="differs from what was prepared \\(its content hash changed"):
        list(fresh.epoch(0))


def test_auto_keeps_the_splits_resident_only_when_they_fit_the_stated_share(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(placement, "free_memory_bytes", lambda device: 10 * 2**30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert placement.choose_placement("auto", 5 * 2**30, cpu).kind == "device"
    chosen = placement.choose_placement("auto", 5 * 2**30 + 1, cpu)
    assert chosen.kind == "stream" and "50% of 10.00 GiB" in chosen.reason
    # two CPU ranks on this node each hold a copy in the same RAM
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert placement.choose_placement("auto", 3 * 2**30, cpu).kind == "stream"
    assert placement.choose_placement("auto", 2 * 2**30, cpu).kind == "device"
    # an explicit choice is kept whatever the memory
    assert placement.choose_placement("device", 100 * 2**30, cpu).kind == "device"
    assert placement.choose_placement("stream", 1, cpu).kind == "stream"
    with pytest.raises(ConfigError, match="data_placement must be one of") as refused:
        placement.choose_placement("disk", 1, cpu)
    assert refused.value.parameter == "data_placement"


def test_split_bytes_counts_the_limited_splits_in_their_stored_dtype(make_prepared):
    data = load_prepared(make_prepared(n=24, size=16, dtype="uint16"))
    train, val = len(data.indices("train")), len(data.indices("val"))
    assert placement.split_bytes(data, [("train", 0), ("val", 0)]) == (train + val) * 16 * 16 * 2
    assert placement.split_bytes(data, [("train", 3)]) == 3 * 16 * 16 * 2


def test_host_memory_errors_are_recognised():
    assert placement.is_host_out_of_memory(MemoryError())
    assert placement.is_host_out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert placement.is_host_out_of_memory(HostMemoryError("map failed"))
    assert not placement.is_host_out_of_memory(OSError(errno.EIO, "Input/output error"))
