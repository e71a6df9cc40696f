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
from meddenoise.engine.targets import TargetBatch, TrainingTarget, make_target_batch
from meddenoise.registry import Registry

if TYPE_CHECKING:
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.runtime import Runtime
    from meddenoise.noise.spec import NoiseSpec


class BatchSource(Protocol):
    """Where training batches come from; the fast path is `DeviceBatches` (device-resident, by index)."""

    def __len__(self) -> int: ...
    def steps_per_epoch(self) -> int: ...
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]: ...


# (data, config, runtime) -> a callable that scores a model on the validation split (`reduce_means`' dict).
ValidationFactory = Callable[[Any, "TrainConfig", "Runtime"], Callable[[torch.nn.Module], dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class BatchContext:
    """What turns a clean batch into the step's input: the target, the noise operator and its settings, the
    runtime (device, memory format) and the epoch (the noise of `--noise-mode fresh` depends on it)."""

    target: TrainingTarget
    noise_op: Any
    noise: NoiseSpec
    runtime: Runtime
    epoch: int


def obfuscated_on_device(batch: CleanBatch, context: BatchContext) -> TargetBatch:
    """The fast path: the target's noisy copies made on the device from the clean batch (clean pixels kept
    only if the target may see them)."""
    if batch.clean.shape[0] == 0:  # DP-SGD's Poisson sampling can draw nobody for this rank
        return TargetBatch([batch.clean] * context.target.copies, None, batch.image_keys)
    return make_target_batch(
        context.target,
        context.runtime.to_device_batch(batch.clean),
        batch.image_keys,
        context.noise_op,
        context.noise,
        epoch=context.epoch,
    )


def noisy_from_host(batch: CleanBatch, context: BatchContext) -> TargetBatch:
    """The reference: the batch carries its noisy copy, made on the host once, up front."""
    return TargetBatch([context.runtime.to_device_batch(batch.noisy)], batch.clean, batch.image_keys)


def loss_stays_on_device(loss: torch.Tensor) -> torch.Tensor:
    return loss


def loss_read_every_step(loss: torch.Tensor) -> torch.Tensor:
    """The reference's `loss.item()` after every step: a host synchronisation per step."""
    return torch.tensor(loss.item(), device=loss.device)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How batches reach the step and how often the host looks at the loss (for the reference comparison).

    The training loop calls the hooks without asking which pipeline it runs."""

    name: str
    # (data, config, runtime, placement "device" | "stream") -> the training batches
    make_train_batches: Callable[[Any, TrainConfig, Runtime, str], BatchSource]
    # (clean batch, context) -> what the target trains on, on the device
    target_batch: Callable[[CleanBatch, BatchContext], TargetBatch] = obfuscated_on_device
    # the step's loss -> the loss the loop sums (the reference reads it on the host every step)
    keep_loss: Callable[[torch.Tensor], torch.Tensor] = loss_stays_on_device
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


PIPELINES: Registry[Pipeline] = Registry("pipeline", parameter="pipeline")
for _pipeline in (
    Pipeline("fast", device_train_batches),
    # The paper's habits, for benchmarks (engine/reference.py): host dataset, DataLoader, per-step sync.
    Pipeline(
        "reference",
        reference_pipeline.make_train_batches,
        target_batch=noisy_from_host,
        keep_loss=loss_read_every_step,
        make_validation=reference_pipeline.make_validation,
    ),
):
    PIPELINES.add(_pipeline.name, _pipeline)


def get_pipeline(name: str) -> Pipeline:
    return PIPELINES.get(name)
