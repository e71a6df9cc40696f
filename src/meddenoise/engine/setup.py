"""What the loop trains with: model, optimizer, batches, step and step budget of one run, made in one call.

Ordinary training and DP-SGD (engine/private.py, `make_private`) differ only in what this returns, so the
loop in engine/train.py runs either without asking which: DP-SGD brings Poisson unit batches, an Opacus
optimizer with its accountant, a per-sample-gradient wrapper and a step that clips per unit, and `extras`
that add epsilon to the epoch records and the summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from meddenoise.engine.step import TrainStep, build_optimizer

if TYPE_CHECKING:
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.pipelines import BatchSource, Pipeline
    from meddenoise.engine.runtime import Runtime


class RunExtras(Protocol):
    """What a training mode adds to the run's records and log, and its own resumable state."""

    def record_fields(self) -> dict[str, Any]: ...
    def summary_fields(self) -> dict[str, Any]: ...
    def notes(self) -> list[str]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], steps_taken: int) -> None: ...


class NoExtras:
    """Ordinary training records nothing beyond the loop's own fields."""

    def record_fields(self) -> dict[str, Any]:
        return {}

    def summary_fields(self) -> dict[str, Any]:
        return {}

    def notes(self) -> list[str]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], steps_taken: int) -> None:
        return None


@dataclasses.dataclass
class TrainingSetup:
    model: nn.Module  # placed on the device, not wrapped: what checkpoints and the weight average read
    optimizer: torch.optim.Optimizer
    train_batches: BatchSource
    total_steps: int  # the step budget: --epochs worth of steps, capped by --max-steps
    wrap: Callable[[nn.Module], nn.Module]  # model -> what the step trains (DataParallel, DDP, Opacus)
    # (wrapped model, optimizer, runtime, target, loss_fn, *, grad_clip, ema) -> the step
    make_step: Callable[..., TrainStep] = TrainStep
    extras: RunExtras = dataclasses.field(default_factory=NoExtras)


def training_setup(
    model: nn.Module, data: Any, config: TrainConfig, runtime: Runtime, pipeline: Pipeline, placement: str
) -> TrainingSetup:
    """DP-SGD's setup when a privacy budget or noise multiplier is configured, the ordinary one otherwise."""
    from meddenoise.engine import private

    if private.enabled(config):
        return private.make_private(model, data, config, runtime)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, runtime.device)
    batches = pipeline.make_train_batches(data, config, runtime, placement)
    return TrainingSetup(
        model=model,
        optimizer=optimizer,
        train_batches=batches,
        total_steps=config.step_budget(batches.steps_per_epoch()),
        wrap=runtime.wrap,
    )
