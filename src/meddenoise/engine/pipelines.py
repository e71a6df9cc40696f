"""Pipelines: how training batches reach the step (`--pipeline fast|reference`).

The fast path gathers batches by index from device-resident images (`DeviceBatches`) or streams them from the
memory-mapped images (`StreamBatches`, see engine/placement.py); the reference pipeline
(engine/reference.py) reproduces the paper's code's habits so benchmarks can measure the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch

from meddenoise.data.loader import CleanBatch
from meddenoise.engine import reference as reference_pipeline
from meddenoise.engine.placement import make_batches
from meddenoise.errors import ConfigError

if TYPE_CHECKING:
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.runtime import Runtime


class BatchSource(Protocol):
    """Where training batches come from; the fast path is `DeviceBatches` (device-resident, by index)."""

    def __len__(self) -> int: ...
    def steps_per_epoch(self) -> int: ...
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]: ...


# (data, config, runtime) -> a callable that scores a model on the validation split (`reduce_means`' dict).
ValidationFactory = Callable[[Any, "TrainConfig", "Runtime"], Callable[[torch.nn.Module], dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How batches reach the step and how often the host looks at the loss (for the reference comparison)."""

    name: str
    # (data, config, runtime, placement "device" | "stream") -> the training batches
    make_train_batches: Callable[[Any, TrainConfig, Runtime, str], BatchSource]
    read_loss_every_step: bool = False
    # The batches carry their noisy copy (`batch.noisy`, made on the host up front); the loop makes none.
    noisy_in_batches: bool = False
    # Replaces the device-side validation when set (the reference scores per image on the CPU).
    make_validation: ValidationFactory | None = None


def device_train_batches(
    data: Any, config: TrainConfig, runtime: Runtime, placement: str = "device"
) -> BatchSource:
    """Resident (`DeviceBatches`) or streamed (`StreamBatches`) training batches: the same plan either way."""
    return make_batches(
        data,
        config.train_split,
        runtime.device,
        config.batch_size * runtime.replicas_per_process,
        placement,
        limit=config.limit_train,
        rank=runtime.rank,
        world_size=runtime.world_size,
        seed=config.seed,
        shuffle=True,
    )


PIPELINES: dict[str, Pipeline] = {
    "fast": Pipeline("fast", device_train_batches),
    # The paper's habits, for benchmarks (engine/reference.py): host dataset, DataLoader, per-step sync.
    "reference": Pipeline(
        "reference",
        reference_pipeline.make_train_batches,
        read_loss_every_step=True,
        noisy_in_batches=True,
        make_validation=reference_pipeline.make_validation,
    ),
}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    PIPELINES[pipeline.name] = pipeline
    return pipeline


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        raise ConfigError(f"--pipeline must be one of {', '.join(PIPELINES)}; got {name!r}")
    return PIPELINES[name]
