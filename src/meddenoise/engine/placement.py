"""Where the training and validation images live during a run (`--data-placement auto|device|stream`).

- `device`: each split is copied once to the training device in its stored dtype and batches are gathered
  there by index (`DeviceBatches`); nothing crosses the bus per step. Every DDP rank holds the whole splits.
- `stream`: batches are read from the memory-mapped images.npy by index, in a background thread, into
  reusable (pinned on CUDA) host buffers and copied asynchronously, one batch ahead (`StreamBatches`). Memory
  use does not grow with the dataset, and each rank reads only its own shard.
- `auto`: `device` when the splits take at most `MEMORY_SHARE` of the memory that is free for them (on CUDA
  the device's free memory; on the CPU the host's available memory, shared by this node's processes), else
  `stream`.

Both placements follow the same batch plan, so the choice changes speed and memory, never the results.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any

import numpy as np
import torch

from meddenoise.data.loader import DeviceBatches
from meddenoise.data.streaming import StreamBatches
from meddenoise.errors import ConfigError, HostMemoryError

PLACEMENTS = ("auto", "device", "stream")
# `auto` keeps the splits resident when they need at most this share of the free memory: the rest is left
# for the model, activations, the optimizer and (on the CPU) everything else on the machine.
MEMORY_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Placement:
    kind: str  # device | stream
    reason: str  # one line for the log


def split_bytes(data: Any, splits: list[tuple[str, int]]) -> int:
    """Bytes the (split, limit) pairs take in their stored dtype."""
    per_image = int(np.prod(data.images.shape[1:])) * data.images.dtype.itemsize
    total = 0
    for split, limit in splits:
        count = len(data.indices(split))
        total += (min(count, limit) if limit else count) * per_image
    return total


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the host's available memory for the CPU (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def processes_sharing_memory(device: torch.device) -> int:
    """Processes of this run that hold their own copy in the same memory: a node's CPU ranks share its RAM."""
    if device.type == "cuda":
        return 1  # one GPU per process
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, int(local)) if local.isdigit() else 1


def choose_placement(requested: str, needed: int, device: torch.device) -> Placement:
    """Decide the placement; `needed` is the bytes of the splits one process would hold."""
    if requested not in PLACEMENTS:
        raise ConfigError(
            f"data_placement must be one of {', '.join(PLACEMENTS)}; got {requested!r}", "data_placement"
        )
    size = f"{needed / 2**30:.2f} GiB"
    if requested != "auto":
        return Placement(requested, f"{requested} (as asked; the splits take {size})")
    free = free_memory_bytes(device)
    if free is None:
        return Placement("device", f"device (the splits take {size}; free memory unknown)")
    sharing = processes_sharing_memory(device)
    budget = MEMORY_SHARE * free / sharing
    where = "on " + str(device) if device.type == "cuda" else "host memory available"
    shared = f", shared by {sharing} processes" if sharing > 1 else ""
    fits = needed <= budget
    comparison = "<=" if fits else ">"
    return Placement(
        "device" if fits else "stream",
        f"{'device' if fits else 'stream'} (auto: the splits take {size} {comparison} "
        f"{MEMORY_SHARE:.0%} of {free / 2**30:.2f} GiB {where}{shared})",
    )


def make_batches(data: Any, split: str, device: torch.device, batch_size: int, placement: str, **kwargs):
    """`DeviceBatches` or `StreamBatches` of `split` (same arguments as `DeviceBatches.from_prepared`)."""
    source = StreamBatches if placement == "stream" else DeviceBatches
    return source.from_prepared(data, split, device, batch_size, **kwargs)


def is_host_out_of_memory(exc: BaseException) -> bool:
    """numpy's MemoryError, or a memory map refused for lack of memory or address space (ENOMEM)."""
    if isinstance(exc, (MemoryError, HostMemoryError)):
        return True
    return isinstance(exc, OSError) and exc.errno == errno.ENOMEM
