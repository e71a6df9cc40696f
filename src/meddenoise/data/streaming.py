"""Clean batches read from the memory-mapped `images.npy` by index, for splits too large for the device.

`StreamBatches` has the interface of `DeviceBatches` and follows the same plan (the per-(seed, epoch)
permutation, the global batches and each rank's contiguous part of them), so a run gives bitwise the same
batches, hence the same weights, whichever placement it uses. What differs is where the pixels come from:

- a background thread reads each batch's rows from the memmap into a reusable host buffer (pinned when CUDA
  is available, so the copy to the device can be asynchronous). A rank reads only the rows of its own parts,
  so it touches only its shard's pages, never the whole file;
- on CUDA the loop issues the copy of batch i+1 on a side stream before handing out batch i (double
  buffering); the compute stream waits for that copy only when it uses the batch, and a buffer is refilled
  only after the event recorded behind its copy has passed;
- the conversion to float in [0, 1] is the resident path's (`stored.float().div_(max_value)`), on the device.

A read error in the thread (a file truncated under the run, memory exhausted) is raised in the training loop.
Rows are read with `os.preadv` from the file behind the memmap, not through the mapping: a file truncated
under the run then gives a short read and a message, where touching a vanished page of the mapping would
kill the process (SIGBUS). And each row is checked once per run against the content hash the manifest
recorded at prepare time, so a file rewritten in place (same size, other pixels) is refused, not trained on.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from meddenoise.data.loader import CleanBatch, epoch_plan, shard_plan, split_rows

# Host buffers per stream: one being filled, one waiting, one whose copy to the device may still be running.
BUFFERS = 3
# How often a waiting thread looks whether the consumer went away (seconds).
POLL_SECONDS = 0.05


class _Buffer:
    """One batch's worth of pinned (or plain) host memory: pixels, image keys and split positions."""

    def __init__(self, capacity: int, height: int, width: int, dtype: np.dtype, pin: bool) -> None:
        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        self.images = torch.empty((capacity, height, width), dtype=torch_dtype, pin_memory=pin)
        self.keys = torch.empty(capacity, dtype=torch.int64, pin_memory=pin)
        self.positions = torch.empty(capacity, dtype=torch.int64, pin_memory=pin)
        self.copied: Any = None  # a CUDA event recorded after the buffer's last copy to the device


class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamBatches:
    """Batches of one split streamed from a prepared folder's memmap. `images` is the (N, H, W) memmap of
    the whole folder, `rows` the split's manifest rows (positions in the split index them)."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        image_keys: np.ndarray,
        max_value: int,
        batch_size: int,
        device: torch.device | str,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        buffers: int = BUFFERS,
        content_hashes: list[str] | None = None,
        image_ids: list[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1; got {batch_size}")
        if len(rows) != len(image_keys):
            raise ValueError("rows and image keys differ in length")
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.image_keys = np.asarray(image_keys, dtype=np.int64)
        self.max_value = float(max_value)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle = shuffle
        self.buffers = max(2, buffers)
        self.on_cuda = self.device.type == "cuda"
        self.pin = self.on_cuda and torch.cuda.is_available()
        # positions (into `rows`) -> expected content hash; checked the first time each row is read
        self.content_hashes = content_hashes
        self.image_ids = image_ids
        self.verified = np.zeros(len(self.rows), dtype=bool)
        self.filename = getattr(images, "filename", None)
        self.offset = int(getattr(images, "offset", 0) or 0)

    @classmethod
    def from_prepared(
        cls, data, split: str, device, batch_size: int, *, limit: int = 0, **kwargs
    ) -> StreamBatches:
        """The first `limit` images of `split` (all when 0); nothing is read until a batch is asked for."""
        rows = split_rows(data, split, limit)
        records = [data.records[int(row)] for row in rows]
        hashes = [record.get("content_hash") or "" for record in records]
        return cls(
            data.images,
            rows,
            data.image_keys[rows],
            data.max_value,
            batch_size,
            device,
            content_hashes=hashes if all(hashes) else None,
            image_ids=[record.get("image_id", "") for record in records],
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def steps_per_epoch(self) -> int:
        return sum(1 for _ in self._epoch_plan(0))

    def _epoch_plan(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, int]]:
        return epoch_plan(
            len(self),
            self.batch_size,
            self.rank,
            self.world_size,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            start_step=start_step,
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]:
        """This rank's batches of `epoch`, from step `start_step` on (the plan of `DeviceBatches.epoch`)."""
        return self._stream(list(self._epoch_plan(epoch, start_step)))

    def shard(self) -> Iterator[CleanBatch]:
        """This rank's contiguous share of the split in order (the plan of `DeviceBatches.shard`)."""
        plan = [
            (positions, len(positions))
            for positions in shard_plan(len(self), self.batch_size, self.rank, self.world_size)
        ]
        return self._stream(plan)

    # -- the reading thread and the double-buffered copies ------------------------------------------------
    def _stream(self, plan: list[tuple[np.ndarray, int]]) -> Iterator[CleanBatch]:
        if not plan:
            return
        capacity = max(len(positions) for positions, _ in plan)
        height, width = self.images.shape[1:]
        free: queue.Queue[_Buffer] = queue.Queue()
        for _ in range(min(self.buffers, len(plan) + 1)):
            free.put(_Buffer(capacity, height, width, self.images.dtype, self.pin))
        ready: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read_batches, args=(plan, free, ready, stop), name="meddenoise-stream", daemon=True
        )
        copy_stream = torch.cuda.Stream(self.device) if self.on_cuda else None
        reader.start()
        try:
            pending = self._start_copy(self._next_ready(ready, reader), free, copy_stream)
            while pending is not None:
                following = self._start_copy(self._next_ready(ready, reader), free, copy_stream)
                yield self._finish(pending)
                pending = following
        finally:
            stop.set()
            reader.join()

    def _read_rows(self, positions: np.ndarray, out: np.ndarray, handle: int | None) -> None:
        """The rows of `positions` into `out`: by `os.preadv` from the file when there is one (a short read
        is a message, not SIGBUS), else from the array; each row's first read is checked against its hash."""
        from meddenoise.data.manifest import pixel_hash
        from meddenoise.errors import DataError

        rows = self.rows[positions]
        if handle is None:
            # mode="clip" writes straight into `out` (the default "raise" buffers it first)
            np.take(self.images, rows, axis=0, out=out, mode="clip")
        else:
            row_bytes = out[0].nbytes if len(out) else 0
            for index, row in enumerate(rows):
                got = os.preadv(
                    handle, [memoryview(out[index]).cast("B")], self.offset + int(row) * row_bytes
                )
                if got != row_bytes:
                    raise DataError(
                        f"{self.filename} is shorter than when it was prepared: image row {int(row)} cannot "
                        "be read (the file was truncated or replaced under the run); training stopped and "
                        "its last checkpoint is kept: prepare the folder again, then resume the run",
                        parameter="resume",
                    )
        if self.content_hashes is None:
            return
        for index, position in enumerate(positions):
            if self.verified[position]:
                continue
            if pixel_hash(out[index]) != self.content_hashes[position]:
                name = self.image_ids[position] if self.image_ids else f"row {int(self.rows[position])}"
                raise DataError(
                    f"{self.filename or 'the prepared images'}: image {name} differs from what was prepared "
                    "(its content hash changed: the file was modified under the run); training stopped and "
                    "its last checkpoint is kept: prepare the folder again, then resume the run",
                    parameter="resume",
                )
            self.verified[position] = True

    def _read_batches(self, plan, free: queue.Queue, ready: queue.Queue, stop: threading.Event) -> None:
        """The thread: fill free buffers with the plan's batches, in order, until done or told to stop."""
        handle = os.open(self.filename, os.O_RDONLY) if self.filename else None
        try:
            for positions, global_size in plan:
                buffer = None
                while buffer is None:
                    if stop.is_set():
                        return
                    try:
                        buffer = free.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        continue
                if buffer.copied is not None:
                    buffer.copied.synchronize()  # its previous batch may still be on its way to the device
                    buffer.copied = None
                count = len(positions)
                self._read_rows(positions, buffer.images[:count].numpy(), handle)
                buffer.keys[:count].copy_(torch.from_numpy(self.image_keys[positions]))
                buffer.positions[:count].copy_(torch.from_numpy(positions))
                ready.put((buffer, count, global_size))
            ready.put(_End())
        except BaseException as error:  # handed to the training loop, which raises it
            ready.put(_Failure(error))
        finally:
            if handle is not None:
                os.close(handle)

    @staticmethod
    def _next_ready(ready: queue.Queue, reader: threading.Thread) -> Any:
        while True:
            try:
                return ready.get(timeout=1.0)
            except queue.Empty:
                if not reader.is_alive() and ready.empty():
                    raise RuntimeError("the batch reading thread ended without a result") from None

    def _start_copy(self, item: Any, free: queue.Queue, copy_stream: Any) -> Any:
        """Send a filled buffer to the device (asynchronously on CUDA); None at the end of the plan."""
        if isinstance(item, _End):
            return None
        if isinstance(item, _Failure):
            raise item.error
        buffer, count, global_size = item
        parts = (buffer.images[:count], buffer.keys[:count], buffer.positions[:count])
        if copy_stream is None:  # CPU: convert now, then the buffer can be refilled at once
            images, keys, positions = parts
            clean = images.unsqueeze(1).float().div_(self.max_value)
            batch = CleanBatch(clean, keys.clone(), positions.clone(), global_size)
            free.put(buffer)
            return batch
        with torch.cuda.stream(copy_stream):
            on_device = [part.to(self.device, non_blocking=True) for part in parts]
            copied = torch.cuda.Event()
            copied.record(copy_stream)
        buffer.copied = copied
        free.put(buffer)
        return on_device, copied, global_size

    def _finish(self, pending: Any) -> CleanBatch:
        """The batch as the loop uses it; on CUDA the compute stream first waits for its copy."""
        if isinstance(pending, CleanBatch):
            return pending
        (images, keys, positions), copied, global_size = pending
        current = torch.cuda.current_stream(self.device)
        current.wait_event(copied)
        for tensor in (images, keys, positions):
            tensor.record_stream(current)  # memory made on the copy stream, used on this one
        clean = images.unsqueeze(1).float().div_(self.max_value)
        return CleanBatch(clean, keys, positions, global_size)
